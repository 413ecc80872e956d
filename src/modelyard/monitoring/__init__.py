"""Watching models in production: prediction log, feedback, metrics, drift and alerts.

Modules, each one noun: ``predlog`` (the asynchronous, sampled prediction log), ``logstore``
(where it is kept and read back), ``chunk`` (a chunk of logged requests, packed as arrays),
``summary`` (what of an input the log keeps), ``drift`` (pure drift statistics and reports),
``quality`` (metrics per version and window from fed-back labels), ``alerts`` (rules, events,
webhooks), ``cron`` (schedules), and ``monitor`` (:class:`Monitor`, the facade the server, the
CLI, the admin API and the scheduler call).
"""
