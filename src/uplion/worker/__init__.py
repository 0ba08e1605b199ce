"""Workers: pull tasks of one model from the broker when a slot is free, answer with an engine."""

from uplion.worker.runner import Worker, announce_failure, worker_name

__all__ = ["Worker", "announce_failure", "worker_name"]
