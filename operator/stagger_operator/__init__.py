"""The Stagger operator (kopf): reconciles InferenceStreams into placed, pinned workloads.

Layout (filled in by the operator issue): ``handlers`` (thin kopf delegates), ``reconcile``
(pure desired state from :mod:`stagger.core`), ``manifests`` (pure builders, golden-tested)
and ``kube`` (the only module that talks to the Kubernetes API).
"""
