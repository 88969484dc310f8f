"""Stage-1 training of a VQGAN from scratch: losses, patch-GAN discriminator and the jit step.

Loss of the autoencoder (images in [-1, 1] space, as taming's VQLPIPSWithDiscriminator):
  nll  = recon_weight * |x - x_rec| (L1, or squared for "l2") + perceptual_weight * P(x, x_rec)
  loss = nll + aux_weight * aux + disc_factor * w_adapt * (-mean D(x_rec))
where aux is the codebook+commitment loss ("vq") or the Gumbel KL to the uniform prior
("gumbel"), P is a perceptual distance the user supplies (e.g. LPIPS with its weights; none is
built in), and w_adapt = disc_weight * |dnll/dW| / (|dG/dW| + 1e-4) with W the decoder's last
conv kernel (taming's adaptive weight). The discriminator minimises the hinge loss
0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_rec))). Both terms switch on at `disc_start`.

Dead-code restarts (`restart_every` > 0, "vq" quantizer only; not in taming): every
`restart_every` steps up to step `restart_until`, each code that no latent chose since the last
restart is moved onto the encoder's output at a random position of the current batch, so that a
large codebook gets used; the steps after `restart_until` let the decoder settle on the codes.

Pure functions: `init_state(...)` and `make_train_step(...)` returning
`train_step(state, batch) -> (state, metrics)` for the caller to jit; a batch is
{"images": float (B, H, W, 3) in [0, 1]}.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

Perceptual = Callable[[jax.Array, jax.Array], jax.Array]  # (B,H,W,3) x2 in [-1,1] -> scalar


@flax.struct.dataclass
class VQGANTrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  disc_params: Any  # None without a discriminator
  disc_opt_state: Any
  rng: jax.Array
  code_usage: Any = None  # (n_embed,) int32 uses since the last dead-code restart, or None


class PatchDiscriminator(nn.Module):
  """taming's NLayerDiscriminator (pix2pix PatchGAN): (B,H,W,3) -> (B,H',W',1) real/fake logits.

  conv k4 s2 + LeakyReLU(0.2), then `n_layers - 1` more strided convs and one stride-1 conv with
  widths channels * min(2**n, 8), each normalised and LeakyReLU, then a k4 s1 conv to 1 channel.
  GroupNorm replaces the original's BatchNorm, so the discriminator keeps no batch statistics.
  """
  channels: int = 64
  n_layers: int = 3
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    conv = lambda c, s, bias=True: nn.Conv(c, (4, 4), (s, s), ((1, 1), (1, 1)), use_bias=bias, **kw)
    x = nn.leaky_relu(conv(self.channels, 2)(x.astype(self.dtype)), 0.2)
    for n in range(1, self.n_layers + 1):
      width = self.channels * min(2 ** n, 8)
      x = conv(width, 2 if n < self.n_layers else 1, bias=False)(x)
      x = nn.leaky_relu(nn.GroupNorm(num_groups=min(32, width), epsilon=1e-5, **kw)(x), 0.2)
    return conv(1, 1)(x).astype(jnp.float32)


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  return 0.5 * (jnp.mean(nn.relu(1.0 - logits_real)) + jnp.mean(nn.relu(1.0 + logits_fake)))


def reconstruction_loss(x: jax.Array, x_rec: jax.Array, kind: str) -> jax.Array:
  """Mean per-pixel L1 ("l1") or squared ("l2") error."""
  if kind == "l1":
    return jnp.mean(jnp.abs(x - x_rec))
  if kind == "l2":
    return jnp.mean((x - x_rec) ** 2)
  raise ValueError(f"recon_loss must be 'l1' or 'l2', got {kind!r}")


def gumbel_temperature(step: jax.Array, schedule) -> jax.Array:
  """Exponential annealing from `start` to `end` over `steps` steps, then constant."""
  start, end, steps = schedule
  frac = jnp.clip(step / max(int(steps), 1), 0.0, 1.0)
  return start * (end / start) ** frac


def learning_rate(cfg: Mapping[str, Any]) -> float | optax.Schedule:
  """taming's constant rate, or with `lr_decay_steps` > 0 the rate held until the last
  `lr_decay_steps` steps of `total_steps` and then decayed to 0 along a half cosine."""
  peak, decay = cfg["learning_rate"], int(cfg.get("lr_decay_steps", 0))
  if decay <= 0:
    return peak
  hold = max(int(cfg["total_steps"]) - decay, 0)
  return optax.join_schedules(
      [optax.constant_schedule(peak), optax.cosine_decay_schedule(peak, decay)], [hold])


def make_optimizer(cfg: Mapping[str, Any]) -> optax.GradientTransformation:
  """Adam (taming: betas (0.5, 0.9), constant lr unless `lr_decay_steps`), optional global-norm
  clipping."""
  adam = optax.adam(learning_rate(cfg), b1=cfg["adam_b1"], b2=cfg["adam_b2"])
  return optax.chain(optax.clip_by_global_norm(cfg["grad_clip"]), adam) if cfg["grad_clip"] else adam


def make_discriminator(cfg: Mapping[str, Any]) -> PatchDiscriminator | None:
  """The config's discriminator, or None when `disc_weight` is 0 (no GAN loss)."""
  if not cfg["disc_weight"]:
    return None
  return PatchDiscriminator(cfg["disc_channels"], cfg["disc_layers"])


def init_state(model: nn.Module, cfg: Mapping[str, Any], rng: jax.Array,
               image_shape: tuple[int, int]) -> VQGANTrainState:
  """A fresh VQGANTrainState for `model` (a VQGAN) and the config's discriminator."""
  model_rng, disc_rng, rng = jax.random.split(rng, 3)
  images = jnp.zeros((1, *image_shape, model.in_channels), jnp.float32)
  params = model.init(model_rng, images, method="reconstruct")["params"]
  optimizer = make_optimizer(cfg)
  disc = make_discriminator(cfg)
  disc_params = disc.init(disc_rng, images)["params"] if disc else None
  usage = jnp.zeros((model.n_embed,), jnp.int32) if _restarts(model, cfg) else None
  return VQGANTrainState(step=jnp.zeros((), jnp.int32), params=params,
                         opt_state=optimizer.init(params), disc_params=disc_params,
                         disc_opt_state=optimizer.init(disc_params) if disc else None, rng=rng,
                         code_usage=usage)


def _restarts(model: nn.Module, cfg: Mapping[str, Any]) -> bool:
  """Whether dead codes are restarted: asked for, and a nearest-neighbour codebook."""
  return bool(cfg.get("restart_every", 0)) and model.quantizer == "vq"


def restart_dead_codes(model: nn.Module, params, usage: jax.Array, images: jax.Array,
                       rng: jax.Array):
  """Moves every code with usage 0 onto the encoder's latent at a random position of `images`
  (B,H,W,3) in [0,1]; returns the new params."""
  z = model.apply({"params": params}, images, method="encode_latents")
  z = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
  picks = z[jax.random.randint(rng, (model.n_embed,), 0, z.shape[0])]
  table = params["quantize"]["embedding"]["embedding"]
  table = jnp.where((usage == 0)[:, None], picks.astype(table.dtype), table)
  return {**params, "quantize": {**params["quantize"], "embedding": {"embedding": table}}}


def _last_layer(tree):
  """The decoder's final conv kernel, where taming measures its adaptive GAN weight."""
  return tree["decoder"]["conv_out"]["kernel"]


def make_train_step(model: nn.Module, cfg: Mapping[str, Any],
                    perceptual: Perceptual | None = None):
  """Returns train_step(state, {"images": (B,H,W,3) in [0,1]}) -> (state, metrics of scalars).

  `perceptual(x, x_rec)` (images in [-1,1]) is used when given and perceptual_weight > 0.
  """
  cfg = dict(cfg)
  optimizer = make_optimizer(cfg)
  disc = make_discriminator(cfg)
  use_perceptual = perceptual is not None and cfg["perceptual_weight"] > 0
  restarts = _restarts(model, cfg)

  def autoencoder_terms(params, disc_params, images, rng, temperature):
    """((nll, weighted aux loss, generator loss), (x, x_rec, codes, metrics)) for one batch."""
    x_rec, aux, codes = model.apply({"params": params}, images, rng, temperature)
    x = 2.0 * images - 1.0
    rec = reconstruction_loss(x, x_rec, cfg["recon_loss"])
    nll = cfg["recon_weight"] * rec
    metrics = {"rec_loss": rec, "aux_loss": aux,
               "psnr": -10.0 * jnp.log10(jnp.mean(((x - x_rec) / 2.0) ** 2) + 1e-10),
               "codes_used": jnp.sum(jnp.bincount(codes.ravel(), length=model.n_embed) > 0)}
    if use_perceptual:
      p_loss = jnp.mean(perceptual(x, x_rec))
      nll = nll + cfg["perceptual_weight"] * p_loss
      metrics["perceptual_loss"] = p_loss
    g_loss = -jnp.mean(disc.apply({"params": disc_params}, x_rec)) if disc else jnp.zeros(())
    return (nll, cfg["aux_weight"] * aux, g_loss), (x, x_rec, codes, metrics)

  def train_step(state: VQGANTrainState, batch: Mapping[str, jax.Array]):
    rng = jax.random.fold_in(state.rng, state.step)
    temperature = gumbel_temperature(state.step, cfg["temperature"])
    (nll, aux, g_loss), vjp, (x, x_rec, codes, metrics) = jax.vjp(
        lambda p: autoencoder_terms(p, state.disc_params, batch["images"], rng, temperature),
        state.params, has_aux=True)
    one, zero = jnp.ones(()), jnp.zeros(())
    grads_ae = vjp((one, one, zero))[0]
    metrics = dict(metrics, nll=nll, temperature=temperature)
    if disc is None:
      grads, loss = grads_ae, nll + aux
    else:
      grads_g = vjp((zero, zero, one))[0]
      factor = (state.step >= cfg["disc_start"]).astype(jnp.float32)
      d_weight = (jnp.linalg.norm(_last_layer(grads_ae))
                  / (jnp.linalg.norm(_last_layer(grads_g)) + 1e-4))
      d_weight = jnp.clip(d_weight, 0.0, 1e4) * cfg["disc_weight"] * factor
      grads = jax.tree.map(lambda a, b: a + d_weight * b, grads_ae, grads_g)
      loss = nll + aux + d_weight * g_loss
      d_loss, d_grads = jax.value_and_grad(
          lambda dp: factor * hinge_d_loss(disc.apply({"params": dp}, x),
                                           disc.apply({"params": dp}, jax.lax.stop_gradient(x_rec)))
      )(state.disc_params)
      d_updates, d_opt = optimizer.update(d_grads, state.disc_opt_state, state.disc_params)
      state = state.replace(disc_params=optax.apply_updates(state.disc_params, d_updates),
                            disc_opt_state=d_opt)
      metrics.update(g_loss=g_loss, d_loss=d_loss, d_weight=d_weight)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(loss=loss, grad_norm=optax.global_norm(grads))
    if restarts:
      usage = state.code_usage + jnp.bincount(codes.ravel(), length=model.n_embed)
      done = state.step + 1
      due = (done % cfg["restart_every"] == 0) & (done <= cfg.get("restart_until", done))
      metrics["dead_codes"] = jnp.sum(usage == 0)  # since the last restart
      params = jax.lax.cond(
          due, lambda p: restart_dead_codes(model, p, usage, batch["images"],
                                            jax.random.fold_in(rng, 1)),
          lambda p: p, params)
      state = state.replace(code_usage=jnp.where(due, 0, usage))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step
