"""Model workers: each local model's engine in its own process, shared by every gateway.

    protocol.py    the msgpack frames, WorkerCrashed
    worker.py      the worker process (`python -m inference.workers.worker`)
    supervisor.py  starts, watches and restarts workers; answers load/unload/state
    client.py      a gateway's sockets, WorkerEngine and WorkerRegistry
    middleware.py  503 for new requests while draining

`manage.py serve` holds the data dir's lock, runs the supervisor and starts
the gateway processes.
"""
