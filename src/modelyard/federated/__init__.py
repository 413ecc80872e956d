"""Federated training: a model trained across sites that keep their data, with Flower.

A site (``modelyard federate client``) fits the global weights on its own rows and sends back
weights, row counts and metrics; the server (``modelyard federate``) averages them by rows,
scores each round's global model, passes it through the model's gate and registers it as a
version linked to the run, with the round, the sites and their metrics.

- :mod:`~modelyard.federated.estimators`: a scikit-learn model's weights, read and set.
- :mod:`~modelyard.federated.site`: what a site does with its data.
- :mod:`~modelyard.federated.rounds`: averaging, the gate and registration per round.
- :mod:`~modelyard.federated.flower`: the Flower ServerApp and ClientApp (the only module that
  imports ``flwr``).
- :mod:`~modelyard.federated.deployment` and :mod:`~modelyard.federated.server`: the Flower
  processes, and the run ``modelyard federate`` follows.
"""
