"""The pipeline's stages: one module per stage, each declaring itself (``pipeline.core.stage.Stage``).

Nothing here lists them: ``pipeline.core.graph`` imports every module of this
package and the classes register themselves.  A module imports vLLM only
inside the methods that need it, so a CPU-only stage never loads it.
"""
from pipeline.core.graph import make_stage, stage_class  # noqa: F401 -- the names tests and tools use
