"""The Modal column of the architecture: the same protocols, backed by Modal's primitives.

    JobStore       DictJobStore         modal.Dict (versioned records, put-if-absent as compare-and-set)
    Outbox         DictOutbox           modal.Dict, with a small index of pending deliveries
    Executor       SpawnExecutor        Function.spawn per job; request id <-> FunctionCall id
    OutputStorage  VolumeOutputStorage  a modal.Volume mounted in every container
    key state      DictKeyState         the fal Ed25519 key, shared by every container

Nothing here imports `modal`: each piece takes the Modal object (or an in-process stand-in in the
tests) through a small protocol. modal_app.py at the top of the repository does the wiring.
"""
