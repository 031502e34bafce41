"""The Stagger sidecar: a KServe-v2 gate in front of Triton, and the GPU node agent.

Layout (filled in by the sidecar issue): ``gate`` (pure timing on an injected clock), the
HTTP and gRPC proxies, the slot-file watcher, metrics, and the pynvml node agent.
"""
