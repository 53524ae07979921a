"""The model stage with half-precision weights: the encoder computes in that dtype from end to end (no
autocast over it, no layer cast up to float32 per call); only the head's small result becomes float32."""

from __future__ import annotations

import numpy as np
import torch

from pipeline import columns as C
from pipeline.local import LocalRunner
from pipeline.spec import spec_from_dict


def test_bfloat16_weights_run_every_layer_in_bfloat16(tiny_ner_dir):
    spec = spec_from_dict({
        "input": {"path": "unused"},
        "model": {"path": tiny_ner_dir, "head": "token-classification", "max_length": 32, "dtype": "bfloat16"},
        "output": {"path": "unused-out"},
    })
    runner = LocalRunner(spec)
    model = runner.predict.model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    computed = []
    hooks = [m.register_forward_hook(lambda mod, args, out: computed.append((type(mod).__name__, out.dtype)))
             for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Embedding))]
    try:
        out = runner.predict(runner.tokenize(runner.prepare([{"id": 1, "text": "Alice met Bob in Paris."}])))
    finally:
        for h in hooks:
            h.remove()
    assert len(computed) > 10 and {dtype for _, dtype in computed} == {torch.bfloat16}, computed
    probs = np.asarray(out.column(C.out("probs")).to_pylist()[0][0], dtype=np.float64)
    assert np.allclose(probs.reshape(-1, model.config.num_labels).sum(1), 1.0, atol=1e-5)  # float32 softmax
