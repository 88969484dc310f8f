"""The sharded trainer: mesh, state and batch shardings, sharded init and the jit-compiled step.

    trainer = Trainer.create(config)                # mesh over jax.devices()
    state = trainer.init()                          # built from shapes, placed in its shards
    state, metrics = trainer.step(state, batch)     # batch: global jax.Arrays (trainer.batch_sharding)

The same object, given a TPU topology's abstract devices, lowers and compiles the identical step
ahead of time (`paella_jax.aot`). Shardings follow the config: `config.mesh` and
`config.sharding.rules` (logical axes of parameters and activations -> mesh axes). The step is
traced with those rules in context, so the model's activation constraints keep every
activation split over the batch (and its MLP hidden units over "tensor" where the rules say so):
with FSDP, XLA then gathers each layer's weights instead of resharding the activations.

Paella v3 trained on ByT5 byte ids (config.data.byt5 = "ids") runs the frozen ByT5 encoder of
`config.byt5` inside the step: `text_params()` loads its weights (config.byt5.checkpoint, or
random ones for tests: config.byt5.random_weights) sharded by its own logical rules
(config.byt5.sharding.rules, FSDP by default) on the same mesh, and the step takes them as a
third argument: `trainer.step(state, batch, *trainer.frozen_args)`.

LoRA fine-tuning (config.train.lora, see `paella_jax.lora`) trains only adapter factors: the
step runs the model with adapters, the state (and so the optimizer state, the EMA and the
checkpoints) holds only the factors, and the frozen base params, loaded from
config.train.init_from (in config.train.lora.base_dtype) and sharded as the base model's
parameters, are the step's first frozen argument.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from paella_jax.init_from_shapes import init_from_shapes
from paella_jax import families, lora
from paella_jax.models import paella, paella_v3
from paella_jax.sharding import batch_sharding, logical_shardings, make_mesh, with_logical_rules
from paella_jax.training.step import (TrainState, init_params, init_state, make_optimizer,
                                      make_train_step, state_from_params)


def lora_spec(config) -> lora.LoraSpec | None:
  """The LoRA settings of a training config (config.train.lora), None when it trains every
  weight."""
  c = config.train.get("lora")
  if not c:
    return None
  return lora.LoraSpec(rank=c.rank, alpha=float(c.alpha), targets=c.get("targets") or None,
                       dropout=float(c.get("dropout", 0.0)))


def split_adapters(params) -> tuple[Any, Any]:
  """(base, adapters): a params tree split into its LoRA factors and the rest."""
  from flax.traverse_util import flatten_dict, unflatten_dict
  flat = flatten_dict(params)
  return (unflatten_dict({k: v for k, v in flat.items() if not lora.is_factor(k)}),
          unflatten_dict({k: v for k, v in flat.items() if lora.is_factor(k)}))


@dataclasses.dataclass(frozen=True)
class Trainer:
  """model, optimizer, mesh, state_shardings (a TrainState of NamedShardings), batch_sharding,
  `step` (jit-compiled, state donated) and `init(rng) -> TrainState`."""
  config: Any
  model: paella.DenoiseUNet | paella_v3.PaellaV3
  optimizer: optax.GradientTransformation
  mesh: Mesh
  state_shardings: TrainState
  batch_sharding: NamedSharding
  step: Callable[..., Any]
  _state_from_params: Callable[..., Any]  # jit: (params, rng) -> TrainState, params donated
  text_encoder: Any = None      # v3 on byte ids: the frozen T5Encoder run inside the step
  text_shardings: Any = None    # its parameters' NamedShardings
  lora: lora.LoraSpec | None = None  # LoRA: the adapters' settings (targets filled in)
  base_shardings: Any = None    # LoRA: the frozen base params' NamedShardings

  @classmethod
  def create(cls, config, devices: Sequence[Any] | None = None) -> "Trainer":
    model = families.of_config(config).build_model(config.model)
    optimizer = make_optimizer(config.train)
    mesh = make_mesh(config.mesh, devices)
    rules = config.sharding.rules
    spec = lora_spec(config)
    spec = spec and spec.for_model(model)
    trained = lora.lora_model(model, spec) if spec else model
    state_shardings = logical_shardings(_state_shapes(trained, optimizer, config, unbox=False),
                                        mesh, rules)
    base_shardings = logical_shardings(_base_shapes(model, config), mesh, rules) if spec else None
    data = batch_sharding(mesh, rules)
    text, text_shardings = (_text_encoder(config, model, mesh) if v3_text_input(config) == "ids"
                            else (None, None))
    train_step = make_train_step(trained, optimizer, config.train, text, frozen_base=bool(spec))
    in_shardings = ((state_shardings, data) + ((base_shardings,) if spec else ())
                    + ((text_shardings,) if text else ()))
    step = jax.jit(functools.wraps(train_step)(with_logical_rules(train_step, mesh, rules)),
                   in_shardings=in_shardings,  # every array of a batch: rows split
                   out_shardings=(state_shardings, None), donate_argnums=0)
    state_from = jax.jit(
        lambda params, rng: state_from_params(params, optimizer, rng, config.train.ema_decay > 0),
        out_shardings=state_shardings, donate_argnums=0)
    return cls(config, model, optimizer, mesh, state_shardings, data, step, state_from, text,
               text_shardings, spec, base_shardings)

  @functools.cached_property
  def frozen_args(self) -> tuple:
    """The step's arguments after (state, batch): LoRA's base params, then the ByT5 params on
    byte ids; () when there are none."""
    return self._base_args() + self._text_args()

  def _base_args(self) -> tuple:
    """(the frozen base params,) of LoRA: config.train.init_from's weights in
    config.train.lora.base_dtype, placed in their shards."""
    if self.lora is None:
      return ()
    init_from = self.config.train.get("init_from")
    if not init_from:
      raise ValueError("LoRA fine-tuning (config.train.lora) adapts a trained model: give it "
                       "with --config.train.init_from=CKPT_DIR")
    loaded, params = families.of_model(self.model).load_checkpoint(init_from)
    if loaded.architecture() != self.model.architecture():
      raise ValueError(f"{init_from} holds {loaded.architecture()}, but the config trains "
                       f"{self.model.architecture()}")
    dtype = jnp.dtype(self.config.train.lora.get("base_dtype", "float32"))
    return (jax.device_put(jax.tree.map(lambda p: jnp.asarray(p, dtype), params),
                           self.base_shardings),)

  def _text_args(self) -> tuple:
    if self.text_encoder is None:
      return ()
    from paella_jax.encoders.byt5 import load_t5_encoder, random_t5_encoder
    c = self.config.byt5
    dtype, param_dtype = jnp.dtype(c.get("dtype", "float32")), jnp.dtype(c.get("param_dtype",
                                                                               "float32"))
    if c.get("random_weights"):
      _, params, _ = random_t5_encoder(c.model, c.get("seed", 0), dtype, param_dtype)
    else:
      module, params, _ = load_t5_encoder(c.checkpoint, dtype=dtype, param_dtype=param_dtype)
      if module.config != self.text_encoder.config:
        raise ValueError(f"{c.checkpoint} holds {module.config}, config.byt5.model is "
                         f"{self.text_encoder.config}")
    return (jax.device_put(params, self.text_shardings),)

  def abstract_frozen_args(self) -> tuple:
    """`frozen_args` as ShapeDtypeStructs with their shardings (for AOT)."""
    place = lambda shapes, shardings, dtype=None: jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, dtype or s.dtype, sharding=sh), shapes,
        shardings)
    args = ()
    if self.lora is not None:
      dtype = jnp.dtype(self.config.train.lora.get("base_dtype", "float32"))
      args += (place(_base_shapes(self.model, self.config, unbox=True), self.base_shardings,
                     dtype),)
    if self.text_encoder is not None:
      from paella_jax.models.t5 import init_params as init_t5
      shapes = jax.eval_shape(lambda: init_t5(self.text_encoder, jax.random.key(0)))
      args += (place(shapes, self.text_shardings),)
    return args

  def init(self, rng: jax.Array | None = None) -> TrainState:
    """A fresh state (the values of `step.init_state`): the parameters from shapes, each placed
    in its shards as it is drawn (`init_from_shapes`: no compile of the model), then the
    optimizer state and EMA built in their shards around them."""
    rng = jax.random.key(self.config.train.seed) if rng is None else rng
    params_rng, state_rng = jax.random.split(rng)
    latent_shape = tuple(self.config.latent_shape)
    model = self.model if self.lora is None else lora.lora_model(self.model, self.lora)
    trained = (lambda key: init_params(model, key, latent_shape)) if self.lora is None else (
        lambda key: split_adapters(init_params(model, key, latent_shape))[1])
    params = init_from_shapes(trained, params_rng, self.state_shardings.params)
    return self._state_from_params(params, state_rng)

  def abstract_state(self) -> TrainState:
    """The state as ShapeDtypeStructs carrying their shardings (for restoring and AOT)."""
    model = self.model if self.lora is None else lora.lora_model(self.model, self.lora)
    shapes = _state_shapes(model, self.optimizer, self.config)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, self.state_shardings)

  def check_batch(self, batch_size: int) -> int:
    """`batch_size` if it divides over the mesh's batch shards x grad_accum_steps; otherwise a
    one-line ValueError naming the batch, the shards and what to change."""
    spec = self.batch_sharding.spec[0]
    axes = spec if isinstance(spec, tuple) else (spec,) if spec else ()
    shards = math.prod(self.mesh.shape[a] for a in axes)
    if batch_size % (shards * self.config.train.grad_accum_steps):
      raise ValueError(
          f"global batch {batch_size} is not divisible by the {shards} batch shards (mesh axes "
          f"{axes} of {dict(self.mesh.shape)}) x grad_accum_steps "
          f"{self.config.train.grad_accum_steps}: change train.batch_size, config.mesh.shape or "
          "the rule for 'batch' in config.sharding.rules")
    return batch_size

  def abstract_batch(self, batch_size: int | None = None, byt5_length: int | None = None
                     ) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch as ShapeDtypeStructs with the batch sharding (v3: ByT5 inputs of
    `byt5_length` tokens, by default the longest bucket)."""
    b = self.check_batch(batch_size or self.config.train.batch_size)
    shapes = _CONDITIONING_FIELDS[families.of_model(self.model).kind](self, byt5_length)
    shapes["tokens"] = ((*self.config.latent_shape,), jnp.int32)
    return {name: jax.ShapeDtypeStruct((b, *shape), dtype, sharding=self.batch_sharding)
            for name, (shape, dtype) in shapes.items()}

  def compile(self, batch_size: int | None = None, byt5_length: int | None = None):
    """The step lowered and compiled for abstract arguments: call it like `step`, and read
    its `cost_analysis()` and `memory_analysis()`."""
    return self.step.lower(self.abstract_state(), self.abstract_batch(batch_size, byt5_length),
                           *self.abstract_frozen_args()).compile()


def _v1_fields(trainer: Trainer, byt5_length: int | None) -> dict[str, tuple]:
  """A v1 batch's conditioning: {name: (per-row shape, dtype)}."""
  return {"clip": ((trainer.model.c_clip,), jnp.float32)}


def _v3_fields(trainer: Trainer, byt5_length: int | None) -> dict[str, tuple]:
  """A v3 batch's conditioning (ByT5 inputs of `byt5_length` tokens, by default the longest
  bucket; byte ids when the step encodes them, else states): {name: (per-row shape, dtype)}."""
  length = byt5_length or max(trainer.config.data.byt5_buckets)
  width, clip = trainer.model.byt5_embd, trainer.model.clip_embd
  fields = dict(byt5_mask=((length,), jnp.bool_), clip=((clip,), jnp.float32),
                clip_empty=((clip,), jnp.float32), clip_image=((clip,), jnp.float32))
  if trainer.text_encoder is not None:
    return dict(fields, byt5_ids=((length,), jnp.int32))
  return dict(fields, byt5=((length, width), jnp.float32), byt5_empty=((1, width), jnp.float32))


# The conditioning fields of each model family's training batch (paella_jax/families.py).
_CONDITIONING_FIELDS = {"paella_v1": _v1_fields, "paella_v3": _v3_fields}


def _state_shapes(model, optimizer, config, unbox: bool = True) -> TrainState:
  """The fresh state's ShapeDtypeStructs (boxed with logical axis names unless `unbox`). For a
  model with LoRA adapters the state holds only their factors."""
  key, latent, ema = jax.random.key(0), tuple(config.latent_shape), config.train.ema_decay > 0
  if lora_spec(config) is None:
    return jax.eval_shape(lambda: init_state(model, optimizer, key, latent, ema=ema,
                                             unbox=unbox))
  return jax.eval_shape(lambda: state_from_params(
      split_adapters(init_params(model, key, latent, unbox))[1], optimizer, key, ema))


def _base_shapes(model, config, unbox: bool = False):
  """The base model's params as ShapeDtypeStructs (boxed with logical axis names unless
  `unbox`)."""
  return jax.eval_shape(lambda: init_params(model, jax.random.key(0), tuple(config.latent_shape),
                                            unbox))


def v3_text_input(config) -> str | None:
  """What a config's data gives a v3 step for the caption: "ids" (ByT5 byte ids, encoded in the
  step) or "states" (hidden states); None for v1. config.data.byt5, "states" when absent."""
  if "byt5" not in families.of_config(config).text_encoders:
    return None
  byt5 = config.data.get("byt5", "states")
  if byt5 not in ("ids", "states"):
    raise ValueError(f"config.data.byt5 must be 'ids' or 'states', got {byt5!r}")
  return byt5


def _text_encoder(config, model: paella_v3.PaellaV3, mesh: Mesh):
  """The frozen ByT5 encoder of config.byt5 and its parameters' shardings on `mesh`."""
  from paella_jax.encoders.byt5 import DEFAULT_RULES, param_shardings
  from paella_jax.models.t5 import T5Config, T5Encoder
  c = config.get("byt5")
  if c is None:
    raise ValueError("config.data.byt5 = 'ids' needs config.byt5: the ByT5 encoder (e.g. "
                     "configs/byt5_xl.py) that encodes the byte ids in the train step")
  t5 = T5Encoder(T5Config.from_dict(c.model.to_dict()), dtype=jnp.dtype(c.get("dtype", "float32")),
                 param_dtype=jnp.dtype(c.get("param_dtype", "float32")))
  if t5.config.d_model != model.byt5_embd:
    raise ValueError(f"config.byt5 has d_model {t5.config.d_model}, the model's byt5_embd is "
                     f"{model.byt5_embd}")
  rules = c.sharding.rules if "sharding" in c else DEFAULT_RULES
  return t5, param_shardings(t5, mesh, rules)
