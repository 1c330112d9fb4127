"""A latent-knowledge overseer: score an answer by the model's own truth direction.

:class:`ProbeJudge` reads a model's residual stream instead of its words. It is fitted once, on
paired true/false statements of a ``world`` dataset (``dataset``), and then scores any text by
the probability its logistic-regression probe gives to "true":

- **fit** (:meth:`ProbeJudge.build`): the dataset's **train**-split entities only (``world``
  splits by entity, so a judge evaluated on test-split questions never saw their entities), each
  with its true statement and one false one, in two formats (``formats``): the bare statement
  (``"The city of Lagos is in Nigeria."``) and the question with the stated value as its answer
  (``"Q: In which country is the city of Lagos?\\nA: Nigeria"``). Features are
  ``blocks.{layer}.hook_resid_post`` at the last token; the layer (``layer: auto``) is chosen by
  grouped cross-validation and the probe scored on held-out entities
  (:func:`~superalign.validate.probes.probe_layers`; recorded in ``info["fit"]``);
- **score** (the overseer protocol): ``"<prompt> <completion>"`` (each stripped; the completion
  alone when the prompt is empty, i.e. a bare statement) -> P(true) under the probe.

The judge sees no ground truth of the items it scores; it is compared with the prompted judge
(:class:`~superalign.overseers.judge.LLMJudge`) on the same items by the ``judge_eval`` stage
(``judges=[prompted,probe]``). See docs/overseers.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from superalign.overseers.base import check_pairs
from superalign.tasks.base import Example, Task

FORMATS = ("statement", "qa")
"""Text formats the probe is fitted on (see the module docstring)."""


def judged_text(prompt: str, completion: str) -> str:
    """What the probe reads: ``"<prompt> <completion>"`` stripped, or the completion alone."""
    prompt, completion = prompt.strip(), completion.strip()
    return f"{prompt} {completion}" if prompt else completion


@dataclass
class ProbeJudge:
    """Scores texts by a fitted truth probe on one layer of a model; see the module docstring."""

    model: Any
    """The HF causal LM whose activations are read."""
    tokenizer: Any
    layer: int
    """Block whose ``hook_resid_post`` (last token) the probe reads."""
    probe: Any
    """Fitted sklearn pipeline (scaler + logistic regression) on that layer's features."""
    batch_size: int = 32
    info: dict[str, Any] = field(default_factory=dict)
    """The model's record, the dataset, the layer and the fit's held-out AUROC."""

    def probabilities(self, texts: list[str]) -> list[float]:
        """P(true) of each text under the probe."""
        from superalign.validate import activations as A

        hook = A.hook_name(self.layer)
        acts = A.capture(self.model, self.tokenizer, texts, [hook], self.batch_size)
        x = np.asarray(acts.last(hook), dtype=np.float64)  # [n, d_model]
        return self.probe.predict_proba(x)[:, 1].tolist()

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        """P(true) of each ``"<prompt> <completion>"`` (the overseer protocol)."""
        check_pairs(prompts, completions)
        return self.probabilities([judged_text(p, c) for p, c in zip(prompts, completions)])

    @classmethod
    def build(
        cls,
        task: Task | None = None,
        examples: list[Example] | None = None,
        model: str = "smollm2-135m-instruct",
        dataset: str = "cities",
        layer: int | str = "auto",
        n: int = 0,
        formats: list[str] | tuple[str, ...] = FORMATS,
        task_options: dict[str, Any] | None = None,
        folds: int = 5,
        c: float = 1.0,
        seed: int = 0,
        batch_size: int = 32,
        device: str | None = None,
    ) -> ProbeJudge:
        """Fit a probe judge on ``model`` (a ``load_model`` spec) from world ``dataset``.

        ``layer``: a block index or ``auto`` (cross-validated choice over all blocks). ``n``:
        statements drawn from the train split (0: one true and one false per train entity);
        each is used in every one of ``formats``. ``task_options``: the world task's other
        options. ``task`` and ``examples`` are accepted for
        :func:`~superalign.overseers.build_overseer`'s uniform call and not used."""
        from superalign.models.load import load_model
        from superalign.validate import activations as A
        from superalign.validate.probes import probe_layers

        unknown = sorted(set(formats) - set(FORMATS))
        if unknown or not formats:
            raise ValueError(f"formats must be some of {list(FORMATS)}, not {list(formats)}")
        if layer != "auto" and not isinstance(layer, int):
            raise ValueError(f"layer must be a block index or 'auto', not {layer!r}")
        loaded = load_model(model, device=device)
        loaded.model.eval()
        data = fit_statements(dataset, n, formats, task_options, seed)
        n_layers = A.n_blocks(loaded.model)
        layers = list(range(n_layers)) if layer == "auto" else [int(layer)]
        if not all(0 <= i < n_layers for i in layers):
            raise ValueError(f"layer {layer} is not a block of a {n_layers}-block model")
        hooks = [A.hook_name(i) for i in layers]
        acts = A.capture(loaded.model, loaded.tokenizer, data.texts, hooks, batch_size)
        features = {i: acts.last(h) for i, h in zip(layers, hooks)}  # layer -> [n, d_model]
        r = probe_layers(features, data, folds, c, seed)
        info = {
            "model": loaded.info,
            "dataset": dataset,
            "formats": list(formats),
            "layer": r.layer,
            "layer_choice": layer,
            "fit": {"auroc": r.auroc, "auroc_low": r.auroc_low, "auroc_high": r.auroc_high},
            "n_fit_texts": r.n_texts,
            "n_fit_entities": r.n_groups,
            "score": "P(true) of the logistic-regression probe on '<prompt> <completion>'",
        }
        return cls(loaded.model, loaded.tokenizer, int(r.layer), r.probe, batch_size, info)


def fit_statements(
    dataset: str,
    n: int = 0,
    formats: list[str] | tuple[str, ...] = FORMATS,
    task_options: dict[str, Any] | None = None,
    seed: int = 0,
):
    """The probe judge's fitting data: a :class:`~superalign.validate.probes.Contrast` of the
    train-split statements of world ``dataset`` in each of ``formats``, grouped by entity."""
    from superalign.validate.probes import Contrast, world_statements

    task, examples = world_statements(dataset, n, seed, task_options, splits=("train",))
    texts, labels, groups = [], [], []
    for ex in examples:
        entity, value = ex.meta["entity"], ex.meta["stated_value"]
        for fmt in formats:
            if fmt == "statement":
                texts.append(ex.meta["text"])
            else:
                texts.append(judged_text(f"Q: {task.data.question(entity)}\nA:", value))
            labels.append(int(ex.meta["label"]))
            groups.append(entity)
    return Contrast(texts, labels, groups)
