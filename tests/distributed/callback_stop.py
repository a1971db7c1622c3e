"""Run under torchrun: a callback on every process asks to stop after step 3 of an epoch of 9 (not a
sync step); prints the checkpoint's position on rank 0."""

import sys

import torch

from pyro_vae import ImageData, build_vae, fit, load_dataset
from pyro_vae.callbacks import Callback
from pyro_vae.checkpoint import load_checkpoint


class StopAfter(Callback):
    def on_step_end(self, state):
        state.should_stop = state.should_stop or state.step == 3


frey = load_dataset("frey-face")
small = ImageData("small", frey.train[:180], frey.test[:20], frey.image_shape)
torch.manual_seed(0)
run = fit(build_vae(560, 2, [8], "gaussian", "tanh"), small, out=sys.argv[1], epochs=2, batch_size=20,
          eval_particles=2, device="cpu", progress=False, callbacks=[StopAfter()], checkpoint_every=None)
if run.metrics:
    position = load_checkpoint(f"{sys.argv[1]}/checkpoint.pt").get("position")
    print("stopped early", run.metrics["stopped_early"], "at step", None if position is None else position["step"])
