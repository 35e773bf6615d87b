"""`GradMixOptions`: every option of GradMix's trainer, declared and validated once.

The config (`config.step`, with `pseudo_labels.confidence_weights` and
`train.on_nonfinite`) becomes options by `GradMixOptions.from_config`; the
model takes them as `GradMixModel(..., options=...)` (or as keyword
arguments), and its `get_config` / `from_config` are derived from the fields.
"""

from __future__ import annotations

import dataclasses
import math

from gradmix_tf.errors import ConfigError
from gradmix_tf.mixing import groups, weights
from gradmix_tf.networks.label_adapter import ABSENT_ROWS, ESTIMATES, STARTS
from gradmix_tf.rules import RULES
from gradmix_tf.training.step_guard import ON_NONFINITE
from gradmix_tf.training.stream_passes import GRADIENT_MEMORY

BOOLEANS = (
    "share_target_head",
    "label_adapter",
    "adaptive_learning_rate",
    "pseudo_label_confidence_weights",
    "jit_mixing_weights",
)
CONFIG_FIELDS = {
    "on_nonfinite": "train.on_nonfinite",
    "pseudo_label_confidence_weights": "pseudo_labels.confidence_weights",
}
"""The config fields of the options that are not in `config.step`."""


@dataclasses.dataclass(frozen=True)
class GradMixOptions:
    """The options of `GradMixModel` (docs/algorithm.md); the defaults follow the paper
    as reconstructed there.

    Attributes:
        rule: the mixing rule, a name in `gradmix_tf.rules.RULES` (the table of rules
            is in `gradmix_tf/rules/__init__.py`; "closed_form" is the paper's rule as
            reconstructed, "persistent" the configs' default).
        alignment: "dot" (the meta-gradient <g_T,l, g_s,l>) or "cosine"
            (scale-free; not with "lookahead"). Reconstruction option.
        granularity: "layer" (w per stream and layer) or "stream" (one global
            weight per stream).
        layer_groups: what a "layer" of the weights is: "layer" (each Keras
            layer with trainable variables) or "block" (the layers of one block
            of a keras.applications network, by their names' block prefix:
            `mixing.groups`); w is then [S, groups].
        normalization: "per_layer", "all" or "none" (see `mixing.weights`).
            Reconstruction option.
        weight_total: the sum the weights of a layer are normalised to; a
            positive number, or "num_streams" for S (the scale of joint training).
        target_weight: lambda_T, the weight of the labelled target gradient
            in the mixed gradient.
        share_target_head: a source whose class names equal the target's
            uses h_T (and so is mixed on it) instead of a head of its own
            (without `label_adapter`).
        label_adapter: a source with classes of the target's (by name, or by
            its declared relation) predicts through h_T and a learned label
            relation M_s (`networks.label_adapter.LabelAdapter`) instead of a
            head of its own or h_T as it is; sources with no class of the
            target's keep their own heads.
        adapter_sources: with `label_adapter`, the sources that get an adapter,
            by name (empty: every source with classes of the target's); the
            others are treated as without `label_adapter`.
        adapter_start: how M_s starts: "name_match" (the class-name match,
            logits `adapter_strength`), "uniform", or "estimate" (the source
            trains on a head of its own for `adapter_warmup_epochs`, then M_s
            is estimated from h_T's predictions on the source's examples:
            `callbacks.label_relations`).
        adapter_strength: the name match's logit (the identity's prior).
        adapter_estimate: with adapter_start="estimate", what M_s is estimated
            from: "target_head" (h_T's predictions on the source's examples) or
            "source_head" (the source's own head on the labelled target, GLC).
        adapter_learning_rate_scale: A_s moves this many times faster than the
            other weights under Adam (`LabelAdapter.learning_rate_scale`).
        adapter_absent_rows: target classes that no source class names:
            "uniform" rows of M_s, or "masked" out of h_T's prediction.
        adapter_warmup_epochs: with adapter_start="estimate", the epochs
            before the estimate (> 0).
        adapter_refresh_every: estimate M_s again every this many epochs
            after the first estimate (0: never).
        adapter_trace_penalty: the weight of the trace of M_s in the source's
            loss (Tanno et al. 2019; 0: none).
        lookahead_init: the mixing weights the look-ahead starts from.
        lookahead_step_size: alpha of the look-ahead; None uses the
            optimizer's current learning rate.
        adaptive_learning_rate: scale the step size by r_t (step 6).
        rho_decay: decay of the running mean of rho, in [0, 1).
        r_min, r_max: the range r_t is clipped to (0 < r_min <= 1 <= r_max).
        pseudo_label_confidence_weights: weight each pseudo-labelled example's
            loss by its stored confidence (else by 1).
        on_nonfinite: what a NaN/Inf loss or gradient does: "stop" (raise,
            naming the stream and the step, before any update) or "skip"
            (drop the batch; count it in `nonfinite_skipped`). See
            `training.step_guard`.
        pretrain_steps: with rule="pretrain_finetune", the steps of source
            pre-training before target fine-tuning (> 0).
        persistent_init, persistent_step_size, persistent_max: with
            rule="persistent", the weights' start (1: joint training), the
            step along the alignment each step, and their ceiling.
        jit_mixing_weights: solve the mixing weights with the XLA-compiled
            `weights.solve_layer_weights_jit` (pure tensors in and out, so
            it also runs under tf.distribute; the all-reduce stays outside).
        gradient_memory: how a step holds its streams' gradients between steps 2-3
            and 5: "store", "recompute" or "one_pass" (`training.stream_passes`, where
            each is explained; docs/algorithm.md has their cost).
    """

    rule: str = "closed_form"
    alignment: str = "dot"
    granularity: str = "layer"
    layer_groups: str = "layer"
    normalization: str = "per_layer"
    weight_total: float | str = 1.0
    target_weight: float = 1.0
    share_target_head: bool = True
    label_adapter: bool = False
    adapter_sources: tuple[str, ...] = ()
    adapter_start: str = "name_match"
    adapter_strength: float = 4.0
    adapter_estimate: str = "target_head"
    adapter_learning_rate_scale: float = 1.0
    adapter_absent_rows: str = "uniform"
    adapter_warmup_epochs: int = 0
    adapter_refresh_every: int = 0
    adapter_trace_penalty: float = 0.0
    lookahead_init: float = 0.0
    lookahead_step_size: float | None = None
    adaptive_learning_rate: bool = True
    rho_decay: float = 0.99
    r_min: float = 0.5
    r_max: float = 2.0
    pseudo_label_confidence_weights: bool = True
    on_nonfinite: str = "stop"
    pretrain_steps: int = 0
    persistent_init: float = 1.0
    persistent_step_size: float = 0.02
    persistent_max: float = 3.0
    jit_mixing_weights: bool = False
    gradient_memory: str = "store"

    def __post_init__(self):
        def choice(field, allowed):
            value = getattr(self, field)
            if value not in allowed:
                known = ", ".join(map(repr, allowed))
                raise ConfigError(f"{field} must be one of {known}; got {value!r}.")

        for field in BOOLEANS:
            if not isinstance(getattr(self, field), bool):
                raise ConfigError(f"{field} must be True or False, got {getattr(self, field)!r}.")
        choice("rule", RULES)
        choice("alignment", weights.ALIGNMENTS)
        choice("granularity", weights.GRANULARITIES)
        choice("layer_groups", groups.LAYER_GROUPS)
        choice("normalization", weights.NORMALIZATIONS)
        choice("on_nonfinite", ON_NONFINITE)
        choice("gradient_memory", GRADIENT_MEMORY)
        choice("adapter_start", STARTS)
        choice("adapter_absent_rows", ABSENT_ROWS)
        choice("adapter_estimate", ESTIMATES)
        object.__setattr__(self, "adapter_sources", tuple(map(str, self.adapter_sources)))
        self._check_adapter()
        if self.gradient_memory == "recompute" and RULES[self.rule].reads_gradients:
            raise ConfigError(
                "gradient_memory='recompute' keeps only the streams' products with the "
                f"target, but rule={self.rule!r} reads the gradients themselves: use "
                "gradient_memory='store' or 'one_pass' with it."
            )
        if self.rule == "lookahead" and self.alignment != "dot":
            raise ConfigError("rule='lookahead' measures the meta-gradient: use alignment='dot'.")
        if not (0.0 < self.r_min <= 1.0 <= self.r_max):
            raise ConfigError(f"need 0 < r_min <= 1 <= r_max, got {self.r_min}, {self.r_max}.")
        total = self.weight_total
        if isinstance(total, str) and total != "num_streams":
            try:  # a config field that holds "num_streams" holds numbers as strings
                total = float(total)
            except ValueError:
                pass
        if total != "num_streams" and (isinstance(total, str) or not total > 0):
            raise ConfigError(
                f"weight_total must be a positive number or 'num_streams', got {total!r}."
            )
        if not (isinstance(self.target_weight, int | float) and 0 <= self.target_weight < math.inf):
            raise ConfigError(f"target_weight must be a number >= 0, got {self.target_weight!r}.")
        if not 0.0 <= self.rho_decay < 1.0:
            raise ConfigError(f"rho_decay must be in [0, 1), got {self.rho_decay}.")
        if self.rule == "pretrain_finetune" and self.pretrain_steps <= 0:
            raise ConfigError(
                "rule='pretrain_finetune' needs pretrain_steps > 0 (the steps of source "
                f"pre-training), got {self.pretrain_steps}."
            )
        if self.lookahead_step_size is not None and not self.lookahead_step_size > 0:
            raise ConfigError(
                f"lookahead_step_size must be positive or None, got {self.lookahead_step_size}."
            )
        if not 0.0 <= self.persistent_init <= self.persistent_max:
            raise ConfigError(
                "need 0 <= persistent_init <= persistent_max, got "
                f"{self.persistent_init}, {self.persistent_max}."
            )
        if not self.persistent_step_size > 0:
            raise ConfigError(
                f"persistent_step_size must be positive, got {self.persistent_step_size}."
            )
        # Numbers as floats, so that a config's 1 and 1.0 give the same options.
        numbers = ("target_weight", "lookahead_init", "rho_decay", "r_min", "r_max")
        numbers += ("persistent_init", "persistent_step_size", "persistent_max")
        for field in numbers:
            object.__setattr__(self, field, float(getattr(self, field)))
        if total != "num_streams":
            object.__setattr__(self, "weight_total", float(total))
        object.__setattr__(self, "pretrain_steps", int(self.pretrain_steps))

    def _check_adapter(self):
        if self.adapter_start == "estimate" and not int(self.adapter_warmup_epochs) > 0:
            raise ConfigError(
                "adapter_start='estimate' needs adapter_warmup_epochs > 0 (the epochs before "
                f"the label relation is estimated), got {self.adapter_warmup_epochs}."
            )
        for field in ("adapter_warmup_epochs", "adapter_refresh_every", "adapter_trace_penalty"):
            if not getattr(self, field) >= 0:
                raise ConfigError(f"{field} must be >= 0, got {getattr(self, field)}.")
        object.__setattr__(self, "adapter_warmup_epochs", int(self.adapter_warmup_epochs))
        object.__setattr__(self, "adapter_refresh_every", int(self.adapter_refresh_every))
        object.__setattr__(self, "adapter_strength", float(self.adapter_strength))
        object.__setattr__(self, "adapter_trace_penalty", float(self.adapter_trace_penalty))
        if not self.adapter_learning_rate_scale > 0:
            raise ConfigError(
                f"adapter_learning_rate_scale must be > 0, got {self.adapter_learning_rate_scale}."
            )
        scale = float(self.adapter_learning_rate_scale)
        object.__setattr__(self, "adapter_learning_rate_scale", scale)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_config(cls, config) -> GradMixOptions:
        """The options of an experiment config (`configs/digits.py` lists the fields).

        `config.step` holds the fields of the same names, except
        `pretrain_fraction` (of `train.steps`) for `pretrain_steps`, and
        `lookahead_step_size` 0 for None; `pseudo_labels.confidence_weights`
        and `train.on_nonfinite` complete them.
        """
        mix = dict(config.step)
        fraction = mix.pop("pretrain_fraction", 0.5)
        if not (isinstance(fraction, int | float) and 0.0 <= fraction <= 1.0):
            raise ConfigError(f"step.pretrain_fraction must be in [0, 1], got {fraction!r}.")
        unknown = set(mix) - set(cls.field_names())
        if unknown:
            raise ConfigError(f"config.step: unknown gradmix option(s) {sorted(unknown)}.")
        mix["lookahead_step_size"] = mix.get("lookahead_step_size") or None
        try:
            return cls(
                **mix,
                pretrain_steps=int(fraction * config.train.steps),
                pseudo_label_confidence_weights=config.pseudo_labels.confidence_weights,
                on_nonfinite=config.train.on_nonfinite,
            )
        except ConfigError as error:  # say where the option comes from
            field, _, rest = str(error).partition(" ")
            if field in cls.field_names():  # "field must be ...": the config's field
                raise ConfigError(f"{CONFIG_FIELDS.get(field, 'step.' + field)} {rest}") from None
            raise ConfigError(f"config.step: {error}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
