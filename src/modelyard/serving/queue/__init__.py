"""Queue-driven inference: ``modelyard consume`` answers prediction requests from a broker.

A codec of serving like REST and gRPC, around the same data plane (see
:mod:`~modelyard.serving.dataplane`):

- :mod:`.envelope`: what a message says, and the consumer's pure decisions (where the answer
  goes, dead-letter or retry, the dedupe window);
- :mod:`.codec`: a message in, the data plane's answer (or a dead letter) out;
- :mod:`.transport`: brokers by URL scheme (:mod:`.rabbit`, :mod:`.redis_streams`,
  :mod:`.nats_jetstream`, :mod:`.kafka`, each over FastStream);
- :mod:`.consumer`: the process (data plane, codec, transport, signals) and
  :mod:`.command` the ``modelyard consume`` command.
"""
