"""The client side of itx: inputs, the canvas, batches, reports and the CLI.

Importing ``orchestrator`` never imports torch, transformers, diffusers or easyocr.

    from orchestrator import PipelineSpec, run, submit
    spec = PipelineSpec(captioners=["blip", "git"], vqa=["what is in the image?"],
                        edits=["replace:cat=dog", "style:watercolor"], generator="sd")
    records = run(["photos/"], spec, out="out/")            # embedded, returns result records
    batch = submit(["s3://bkt/photos/"], spec, name="b1")   # distributed
    batch.wait(); batch.results()                           # iterator of result records
"""
from orchestrator.batch import Batch, BatchError
from orchestrator.submit import submit
from orchestrator.embedded import run
from workers.spec import PipelineSpec

__all__ = ["PipelineSpec", "run", "submit", "Batch", "BatchError"]
