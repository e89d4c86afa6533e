"""email-reconciler: GitOps for outbound e-mail accounts."""

__version__ = "0.1.0"
