"""Webhooks, Standard Webhooks v1: a job's end told to the frontend's server, signed, retried, never lost.

The script that ends a job records its delivery (s2s/lua/_webhooks.lua); workers lease and send
it (:mod:`.delivery`), on the spec's retry schedule (:mod:`.schedule`), signed (:mod:`.signing`),
only to destinations the deployment allows (:mod:`.destinations`); :mod:`.store` is its Redis side.
"""
