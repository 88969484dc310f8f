"""The sharded trainer: mesh, state and batch shardings, sharded init and the jit-compiled step.

    trainer = Trainer.create(config)                # mesh over jax.devices()
    state = trainer.init()                          # each device builds only its shards
    state, metrics = trainer.step(state, batch)     # batch: global jax.Arrays (trainer.batch_sharding)

The same object, given a TPU topology's abstract devices, lowers and compiles the identical step
ahead of time (`paella_jax.aot`). Shardings follow the config: `config.mesh` and
`config.sharding.rules` (logical axes of parameters and activations -> mesh axes). The step is
traced with those rules in context, so the model's activation constraints keep every
activation split over the batch (and its MLP hidden units over "tensor" where the rules say so):
with FSDP, XLA then gathers each layer's weights instead of resharding the activations.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding

from paella_jax.models import paella, paella_v3
from paella_jax.sharding import batch_sharding, logical_shardings, make_mesh, with_logical_rules
from paella_jax.training.step import TrainState, init_state, make_optimizer, make_train_step


@dataclasses.dataclass(frozen=True)
class Trainer:
  """model, optimizer, mesh, state_shardings (a TrainState of NamedShardings), batch_sharding,
  `step` (jit-compiled, state donated) and `init(rng) -> TrainState` (jit with out_shardings)."""
  config: Any
  model: paella.DenoiseUNet | paella_v3.PaellaV3
  optimizer: optax.GradientTransformation
  mesh: Mesh
  state_shardings: TrainState
  batch_sharding: NamedSharding
  step: Callable[..., Any]
  _init: Callable[..., Any]

  @classmethod
  def create(cls, config, devices: Sequence[Any] | None = None) -> "Trainer":
    v3 = config.get("kind", "paella_v1") == "paella_v3"
    model = (paella_v3 if v3 else paella).build_model(config.model)
    optimizer = make_optimizer(config.train)
    mesh = make_mesh(config.mesh, devices)
    rules = config.sharding.rules
    init = lambda rng, unbox=True: init_state(model, optimizer, rng, tuple(config.latent_shape),
                                              ema=config.train.ema_decay > 0, unbox=unbox)
    boxed = jax.eval_shape(lambda: init(jax.random.key(0), unbox=False))
    state_shardings = logical_shardings(nn.get_partition_spec(boxed), mesh, rules)
    data = batch_sharding(mesh, rules)
    step = jax.jit(with_logical_rules(make_train_step(model, optimizer, config.train), mesh, rules),
                   in_shardings=(state_shardings, data),  # every array of a batch: rows split
                   out_shardings=(state_shardings, None), donate_argnums=0)
    return cls(config, model, optimizer, mesh, state_shardings, data, step,
               jax.jit(init, out_shardings=state_shardings))

  def init(self, rng: jax.Array | None = None) -> TrainState:
    """A fresh state, created directly in its shards (no full copy on any one host)."""
    return self._init(jax.random.key(self.config.train.seed) if rng is None else rng)

  def abstract_state(self) -> TrainState:
    """The state as ShapeDtypeStructs carrying their shardings (for restoring and AOT)."""
    shapes = jax.eval_shape(self._init, jax.random.key(0))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, self.state_shardings)

  def abstract_batch(self, batch_size: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch as ShapeDtypeStructs with the batch sharding."""
    b = batch_size or self.config.train.batch_size
    spec = self.batch_sharding.spec[0]
    axes = spec if isinstance(spec, tuple) else (spec,) if spec else ()
    shards = math.prod(self.mesh.shape[a] for a in axes)
    if b % (shards * self.config.train.grad_accum_steps):
      raise ValueError(
          f"global batch {b} is not divisible by the {shards} batch shards (mesh axes {axes} of "
          f"{dict(self.mesh.shape)}) x grad_accum_steps {self.config.train.grad_accum_steps}: "
          "change the batch, config.mesh.shape or the rule for 'batch' in config.sharding.rules")
    shapes = {"tokens": ((*self.config.latent_shape,), jnp.int32)}
    if isinstance(self.model, paella_v3.PaellaV3):
      length, width, clip = self.config.byt5_length, self.model.byt5_embd, self.model.clip_embd
      shapes.update(byt5=((length, width), jnp.float32), byt5_mask=((length,), jnp.bool_),
                    byt5_empty=((1, width), jnp.float32), clip=((clip,), jnp.float32),
                    clip_empty=((clip,), jnp.float32), clip_image=((clip,), jnp.float32))
    else:
      shapes.update(clip=((self.model.c_clip,), jnp.float32))
    return {name: jax.ShapeDtypeStruct((b, *shape), dtype, sharding=self.batch_sharding)
            for name, (shape, dtype) in shapes.items()}

  def compile(self, batch_size: int | None = None):
    """The step lowered and compiled for abstract arguments: call it like `step`, and read
    its `cost_analysis()` and `memory_analysis()`."""
    return self.step.lower(self.abstract_state(), self.abstract_batch(batch_size)).compile()
