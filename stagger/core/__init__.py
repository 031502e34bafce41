"""The pure core: API models, slot contract, CRD generation, placement, slots, simulation.

Nothing here performs I/O or imports a Kubernetes, HTTP, gRPC, Triton or metrics library
(enforced by import-linter). Same inputs give the same outputs: ties are broken explicitly.
"""
