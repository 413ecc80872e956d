"""Support-ticket routing: a Keras text classifier that takes raw strings.

``load`` generates a few thousand tickets from templates and vocabulary (with typos, filler and
some mislabelled tickets, as in real queues); ``train`` builds
``TextVectorization -> Embedding -> GlobalAveragePooling1D -> Dense(softmax)`` so the saved
model takes raw text and needs no separate preprocessing code to serve.

The labels are strings. The model's output columns follow ``sorted(set(y))``, the order
modelyard records as the version's classes, so column ``i`` is the score of class ``i``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TEMPLATES: dict[str, list[str]] = {
    "billing": [
        "i was charged {twice} for my {plan} subscription",
        "why is there a {charge} on my {statement}",
        "please refund the {charge} from last {period}",
        "my {invoice} shows the wrong amount",
        "can i get a copy of my {invoice} for {period}",
        "the {charge} on my card does not match the {plan} price",
        "cancel the {plan} renewal and refund me",
    ],
    "technical": [
        "the app {crashes} when i open {screen}",
        "i get an {error} when i try to {action}",
        "{screen} is {slow} since the last update",
        "the {device} app will not {action}",
        "sync keeps failing with {error} on my {device}",
        "nothing happens when i tap {screen} on {device}",
    ],
    "account": [
        "i cannot {login} to my account",
        "please {change} my {detail}",
        "how do i {change} the {detail} on my profile",
        "my account was {locked} after too many attempts",
        "i want to delete my account and all my {detail}",
        "two factor code never arrives when i {login}",
    ],
    "shipping": [
        "my {parcel} has not arrived after {days} days",
        "the tracking number for my {parcel} does not work",
        "my {parcel} arrived {damaged}",
        "can you change the delivery {address} for order {order}",
        "the courier left my {parcel} at the wrong {address}",
        "when will order {order} be {shipped}",
    ],
}

VOCAB: dict[str, list[str]] = {
    "twice": ["twice", "two times", "double", "again"],
    "plan": ["premium", "family", "pro", "monthly", "annual", "basic"],
    "charge": ["charge", "fee", "payment", "debit", "transaction"],
    "statement": ["statement", "bank statement", "card", "invoice"],
    "period": ["month", "week", "year", "quarter"],
    "invoice": ["invoice", "receipt", "bill", "vat invoice"],
    "crashes": ["crashes", "freezes", "closes", "hangs", "goes blank"],
    "screen": ["settings", "the dashboard", "my profile page", "search", "the camera", "checkout"],
    "error": ["error 500", "timeout error", "network error", "error code 12", "blank screen"],
    "action": ["upload a file", "save changes", "sync", "install the update", "export data"],
    "slow": ["very slow", "slow", "unresponsive", "laggy"],
    "device": ["iphone", "android", "ipad", "windows", "mac", "web"],
    "login": ["log in", "sign in", "login", "access my account"],
    "change": ["change", "update", "reset", "edit"],
    "detail": ["email address", "password", "phone number", "username", "personal data"],
    "locked": ["locked", "suspended", "disabled", "blocked"],
    "parcel": ["package", "parcel", "order", "delivery", "box"],
    "days": ["3", "5", "7", "10", "14"],
    "damaged": ["damaged", "broken", "open", "wet", "crushed"],
    "address": ["address", "location", "door", "building"],
    "order": ["1042", "77813", "55120", "90211", "31337", "40404"],
    "shipped": ["shipped", "dispatched", "delivered", "sent"],
}

FILLER = ["hi", "hello", "please help", "thanks", "urgent", "asap", "again", "this is annoying",
          "any update", "regards", "quick question"]


def generate(
    n: int = 3000, *, seed: int = 0, label_noise: float = 0.04
) -> tuple[list[str], list[str]]:
    """``n`` tickets and their queues; ``label_noise`` of them carry a wrong label."""
    rng = np.random.default_rng(seed)
    labels = sorted(TEMPLATES)
    texts, ys = [], []
    for _ in range(n):
        label = labels[rng.integers(len(labels))]
        template = TEMPLATES[label][rng.integers(len(TEMPLATES[label]))]
        text = template.format_map({k: v[rng.integers(len(v))] for k, v in VOCAB.items()})
        if rng.random() < 0.5:
            text = f"{FILLER[rng.integers(len(FILLER))]} {text}"
        if rng.random() < 0.3:
            text = f"{text} {FILLER[rng.integers(len(FILLER))]}"
        texts.append(_typo(text, rng) if rng.random() < 0.2 else text)
        wrong, flip = labels[rng.integers(len(labels))], rng.random()
        ys.append(wrong if flip < label_noise else label)
    return texts, ys


def _typo(text: str, rng: np.random.Generator) -> str:
    """Drop or swap one letter, as people do."""
    i = int(rng.integers(1, max(2, len(text) - 1)))
    if rng.random() < 0.5:
        return text[:i] + text[i + 1:]
    return text[: i - 1] + text[i] + text[i - 1] + text[i + 1:]


def load() -> tuple[np.ndarray, np.ndarray]:
    """The data function: 3,000 ticket texts and their queue names, as string arrays."""
    texts, labels = generate(3000, seed=7)
    return np.array(texts, dtype=object), np.array(labels, dtype=object)


def train(X: Any, y: Any, params: dict[str, Any]) -> Any:
    """Fit the text classifier; the returned Keras model takes raw strings."""
    import keras
    import tensorflow as tf

    seed = int(params.get("seed", 0))
    keras.utils.set_random_seed(seed)
    texts = np.asarray(X, dtype=object).reshape(-1)
    labels = np.asarray(y).astype(str)
    classes = sorted(set(labels))  # the column order of the softmax output
    targets = np.searchsorted(np.array(classes), labels)

    vectorize = keras.layers.TextVectorization(
        max_tokens=int(params.get("max_tokens", 2000)),
        output_sequence_length=int(params.get("sequence_length", 24)),
        name="vectorize",
    )
    vectorize.adapt(tf.constant(texts.tolist()))
    inputs = keras.Input(shape=(), dtype="string", name="text")
    x = vectorize(inputs)
    x = keras.layers.Embedding(vectorize.vocabulary_size(), int(params.get("embedding", 32)))(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(len(classes), activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="tickets")
    model.compile(optimizer=keras.optimizers.Adam(float(params.get("lr", 0.01))),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(tf.constant(texts.tolist()), targets, epochs=int(params.get("epochs", 8)),
              batch_size=int(params.get("batch_size", 64)), verbose=0)
    return model
