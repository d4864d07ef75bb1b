"""Pipeline model parallelism over MPI, on torch.distributed.pipelining's schedules.

    import hpcdl.pipeline as hp
    grid = hp.Grid(stages=2)                                   # S x D = world size
    stage = hp.build_stage(layer_builders, grid.stages, grid.stage)   # only my layers
    pipe = hp.Pipeline(stage, grid, n_microbatches=4, loss_fn=F.cross_entropy,
                       schedule="1f1b")
    opt = pipe.distributed_optimizer(torch.optim.Adam(stage.parameters()))
    opt.zero_grad(); loss = pipe.step(x, y); opt.step()

See docs/pipeline.md.
"""

from .checkpoint import PipelineCheckpoint, pipeline_sha256, whole_model_names
from .grid import Grid
from .meter import ActivationMeter, Timeline
from .pipeline import SCHEDULES, Pipeline, StageError
from .process_group import init_process_group
from .split import (build_layers, build_stage, has_parameters, parameter_costs, partition,
                    split_bounds, split_sequential, stage_bounds, time_costs)

__all__ = ["Grid", "Pipeline", "StageError", "SCHEDULES", "init_process_group",
           "partition", "parameter_costs", "has_parameters", "time_costs", "split_bounds",
           "split_sequential", "build_stage", "build_layers", "stage_bounds", "ActivationMeter",
           "Timeline", "PipelineCheckpoint", "whole_model_names", "pipeline_sha256"]
