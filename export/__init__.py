"""rtdecode's build-time toolchain: trained checkpoint → ONNX (checked, with a parity test
against torch) → optional int8 / TensorRT engines, kept in the engine store ``engines/``.

Invoked through the CLI (``rtdecode export``, ``rtdecode engines list|verify``,
``rtdecode bench decode``); the runtime (``rtdecode/``) never imports this package. See
``export/README.md``.
"""

from .specs import REGISTRY, BuildOptions, Built, ExportSpec, ModelEntry, TensorSpec, register
from .store import EngineStore, ExportRequest, export_built, export_checkpoint, verify

__all__ = ["REGISTRY", "BuildOptions", "Built", "EngineStore", "ExportRequest", "ExportSpec",
           "ModelEntry", "TensorSpec", "export_built", "export_checkpoint", "register",
           "verify"]
