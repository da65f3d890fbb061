"""Lean CPU inference for fitted students: int8 weights, a folded BiLSTM, only the vocabulary it can meet.

Why these three:

* **int8 dynamic quantisation** (``quantize_int8``): weights stored as int8, activations quantised
  per call, for ``nn.Linear`` *and* ``nn.LSTM``. It uses PyTorch's eager
  ``torch.ao.quantization.quantize_dynamic`` (fbgemm/x86 kernels). PyTorch marks that API
  deprecated in favour of torchao's ``quantize_``, but torchao's configs only rewrite
  ``nn.Linear`` (no LSTM) and target GPUs and ``torch.compile``; on CPU at batch 1 the eager
  dynamic kernels are what exist for both layer types, in torch 2.13 as pinned. The teacher is
  quantised the same way (its Linear layers), so speed-ups can be quoted against an optimised
  teacher too.
* **Folded BiLSTM** (``FoldedBiLSTM``): the LSTM's input projection of a token does not depend on
  the sentence, so ``embedding @ W_ih^T + b_ih + b_hh`` is computed once per vocabulary row at
  export (both directions). Inference reads one row per token and runs only the recurrent half
  (``h @ W_hh^T``) — two thirds of the multiply-adds of a 384-wide input, 192-unit LSTM — in a
  small NumPy loop with both directions stacked, tokenising with the Rust tokenizer directly.
* **Only reachable rows** (``vocab="transfer"``): a folded table is 8 × hidden wide (1,536 floats a
  row at hidden 192), so the full 30,522-row WordPiece vocabulary would be larger than the
  student. Rows of tokens that never occur in the transfer set (plus special tokens) are
  dropped and such tokens read the ``[UNK]`` row; ``dtype=float16`` halves the rest.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from students.base import ParamCount

FOLDED_META = "folded.json"
FOLDED_WEIGHTS = "folded.npz"
VOCABS = ("all", "transfer")


def quantize_int8(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every ``nn.Linear`` and ``nn.LSTM`` as dynamic int8 (CPU inference only)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # "torch.ao.quantization is deprecated": see the module docstring
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(module).cpu().eval(), {nn.Linear, nn.LSTM}, dtype=torch.qint8)


def file_bytes(path: str | Path) -> int:
    """Bytes of a file, or of every file under a folder: what a model costs to ship."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def fast_encoder(tokenizer: Any, max_length: int) -> Any:
    """The Rust tokenizer behind a Hugging Face fast tokenizer, truncating like ``tokenizer(..., truncation=True)``.

    Calling it directly skips the Python wrapper's per-call work (~0.1 ms a sentence); the ids
    are the same (checked by the tests).
    """
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    backend.no_padding()
    backend.enable_truncation(max_length=max_length)
    return backend


def reachable_ids(tokenizer: Any, texts: Iterable[str], max_length: int) -> np.ndarray:
    """Sorted token ids that occur in ``texts`` (tokenised as the student does), plus every special token."""
    encoder = fast_encoder(tokenizer, max_length)
    seen: set[int] = set(int(i) for i in tokenizer.all_special_ids)
    for enc in encoder.encode_batch(list(texts)):
        seen.update(enc.ids)
    return np.array(sorted(seen), dtype=np.int64)


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


class FoldedBiLSTM:
    """A one-layer BiLSTM student compiled for inference: token → input gates is one table row.

    ``table[row] = [E[id] @ W_ih_fwd^T + b_fwd, E[id] @ W_ih_bwd^T + b_bwd]`` ([rows, 2, 4H]),
    ``row_of[id]`` the row of each token id (``[UNK]``'s row for dropped tokens). Predictions equal
    the student's within float tolerance (float32, all rows); float16 storage rounds the table.
    """

    def __init__(
        self,
        tokenizer: Any,
        table: np.ndarray,
        row_of: np.ndarray,
        w_hh: np.ndarray,
        head: list[tuple[np.ndarray, np.ndarray]],
        meta: dict[str, Any],
    ) -> None:
        self.tokenizer = tokenizer
        self.table, self.row_of, self.w_hh, self.head, self.meta = table, row_of, w_hh, head, meta
        self.hidden = int(meta["hidden_size"])
        self.pooling = str(meta["pooling"])
        self.encoder = fast_encoder(tokenizer, int(meta["max_length"]))

    # -- export -------------------------------------------------------------------------------
    @classmethod
    def from_student(cls, student: Any, keep_ids: Sequence[int] | None = None, dtype: str = "float32") -> FoldedBiLSTM:
        """Fold a fitted ``BiLSTMStudent``; ``keep_ids``: the token ids to keep rows for (None = all)."""
        module = getattr(student, "module", None)
        lstm = getattr(module, "lstm", None)
        if not isinstance(lstm, nn.LSTM) or student.name != "bilstm":
            raise ValueError(f"only a fitted bilstm student can be folded, got {getattr(student, 'name', student)!r}")
        if lstm.num_layers != 1:
            raise ValueError(
                f"folding needs a one-layer BiLSTM (num_layers=1), this one has {lstm.num_layers}: "
                "export it with int8 quantisation instead"
            )
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
        with torch.no_grad():
            emb = module.embedding.weight.detach().float().cpu()
            vocab = emb.shape[0]
            kept = torch.arange(vocab) if keep_ids is None else torch.as_tensor(np.asarray(keep_ids), dtype=torch.long)
            if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= vocab):
                raise ValueError(f"keep_ids must lie in [0, {vocab}); got ids up to {int(kept.max())}")
            directions = []
            for suffix in ("", "_reverse"):
                w_ih = getattr(lstm, f"weight_ih_l0{suffix}").detach().float().cpu()
                bias = (getattr(lstm, f"bias_ih_l0{suffix}") + getattr(lstm, f"bias_hh_l0{suffix}")).detach().float()
                directions.append(emb[kept] @ w_ih.T + bias.cpu())
            table = torch.stack(directions, dim=1).numpy().astype(dtype)  # [rows, 2, 4H]
            w_hh = np.stack(
                [getattr(lstm, f"weight_hh_l0{s}").detach().float().cpu().numpy().T for s in ("", "_reverse")]
            )  # [2, H, 4H]: h @ w_hh
            linears = [m for m in module.head if isinstance(m, nn.Linear)]
            head = [(_array(m.weight).T.copy(), _array(m.bias)) for m in linears]
        tokenizer = student.tokenizer
        unk = tokenizer.unk_token_id
        row_of = np.full(vocab, -1, dtype=np.int32)
        row_of[kept.numpy()] = np.arange(kept.numel(), dtype=np.int32)
        if keep_ids is not None:
            if unk is None or row_of[unk] < 0:
                raise ValueError("a pruned vocabulary must keep the [UNK] row (special tokens are always kept)")
            row_of[row_of < 0] = row_of[unk]
        meta = {
            "hidden_size": int(lstm.hidden_size),
            "pooling": str(module.pooling),
            "num_labels": int(head[-1][1].shape[0]),
            "max_length": int(student.hparams["max_length"]),
            "dtype": dtype,
            "vocab_rows": int(kept.numel()),
            "vocab_size": int(vocab),
        }
        return cls(tokenizer, table, row_of, w_hh.astype(np.float32), head, meta)

    # -- inference ----------------------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self.encoder.encode_batch(list(texts))]

    def sentence_vectors(self, ids: list[np.ndarray]) -> np.ndarray:
        """The pooled BiLSTM states [B, 2H] of token-id sequences (all directions stacked in one loop)."""
        hidden, batch = self.hidden, len(ids)
        lengths = np.array([max(1, len(x)) for x in ids])
        steps = int(lengths.max())
        gates_in = np.zeros((steps, 2, batch, 4 * hidden), dtype=np.float32)
        for b, seq in enumerate(ids):
            rows = self.table[self.row_of[seq]]  # [len, 2, 4H]
            gates_in[: len(seq), 0, b] = rows[:, 0]
            gates_in[: len(seq), 1, b] = rows[::-1, 1]  # the backward direction reads the sentence reversed
        h = np.zeros((2, batch, hidden), dtype=np.float32)
        c = np.zeros_like(h)
        ragged = bool((lengths != steps).any())
        pooled = np.full_like(h, np.finfo(np.float32).min) if self.pooling == "max" else np.zeros_like(h)
        for t in range(steps):
            gates = gates_in[t] + h @ self.w_hh  # [2, B, 4H]
            act = _sigmoid(gates)
            c_new = act[..., hidden : 2 * hidden] * c + act[..., :hidden] * np.tanh(gates[..., 2 * hidden : 3 * hidden])
            h_new = act[..., 3 * hidden :] * np.tanh(c_new)
            if ragged:
                alive = (t < lengths)[None, :, None]
                c, h = np.where(alive, c_new, c), np.where(alive, h_new, h)
                if self.pooling == "max":
                    pooled = np.where(alive, np.maximum(pooled, h_new), pooled)
                elif self.pooling == "mean":
                    pooled += np.where(alive, h_new, 0.0)
            else:
                c, h = c_new, h_new
                if self.pooling == "max":
                    np.maximum(pooled, h, out=pooled)
                elif self.pooling == "mean":
                    pooled += h
        if self.pooling == "last":
            pooled = h
        elif self.pooling == "mean":
            pooled = pooled / lengths[None, :, None]
        return np.concatenate([pooled[0], pooled[1]], axis=-1)

    def predict_logits(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        ids = self.encode(texts)
        out = np.zeros((len(ids), int(self.meta["num_labels"])), dtype=np.float32)
        order = np.argsort([len(x) for x in ids], kind="stable")  # similar lengths together: little padding
        for start in range(0, len(ids), batch_size):
            idx = order[start : start + batch_size]
            x = self.sentence_vectors([ids[i] for i in idx])
            for k, (weight, bias) in enumerate(self.head):
                x = x @ weight + bias
                if k < len(self.head) - 1:
                    np.maximum(x, 0.0, out=x)
            out[idx] = x
        return out

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return self.predict_logits(texts).argmax(axis=1)

    def n_params(self) -> ParamCount:
        table = int(self.table.size)
        rest = int(self.w_hh.size) + sum(int(w.size + b.size) for w, b in self.head)
        return ParamCount(total=table + rest, non_embedding=rest)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        arrays = {"table": self.table, "row_of": self.row_of, "w_hh": self.w_hh}
        for k, (weight, bias) in enumerate(self.head):
            arrays[f"head_w{k}"], arrays[f"head_b{k}"] = weight, bias
        np.savez(out / FOLDED_WEIGHTS, **arrays)
        (out / FOLDED_META).write_text(json.dumps({**self.meta, "head_layers": len(self.head)}, indent=2))
        self.tokenizer.save_pretrained(str(out / "tokenizer"))
        return out

    @classmethod
    def load(cls, path: str | Path) -> FoldedBiLSTM:
        from transformers import AutoTokenizer

        src = Path(path)
        meta = json.loads((src / FOLDED_META).read_text())
        with np.load(src / FOLDED_WEIGHTS) as data:
            head = [(data[f"head_w{k}"], data[f"head_b{k}"]) for k in range(int(meta.pop("head_layers")))]
            table, row_of, w_hh = data["table"], data["row_of"], data["w_hh"]
        return cls(AutoTokenizer.from_pretrained(str(src / "tokenizer")), table, row_of, w_hh, head, meta)


def load_predictor(path: str | Path) -> Any:
    """Whatever a deploy folder holds: a folded BiLSTM, else any saved ``Student`` (int8 ones included)."""
    from students.base import Student

    src = Path(path)
    if (src / FOLDED_META).is_file():
        return FoldedBiLSTM.load(src)
    if (src / "student.json").is_file():
        return Student.load(src).with_runtime("cpu")
    raise FileNotFoundError(f"{src} holds neither a saved student (student.json) nor a folded BiLSTM ({FOLDED_META})")


EXPORTS = ("int8", "folded")


def export_student(
    student: Any, how: str, vocab: str = "all", dtype: str = "float32", texts: Sequence[str] = ()
) -> Any:
    """The inference export ``how`` of a fitted student: an int8 copy, or a folded BiLSTM.

    ``vocab="transfer"`` keeps only the rows of tokens in ``texts`` (the transfer set) for a
    folded BiLSTM; ``dtype`` is its table's storage type. Both results save, load
    (``load_predictor``) and predict like a student.
    """
    if how == "int8":
        if not hasattr(student, "quantized"):
            raise ValueError(f"int8 export is for neural students; {student.name!r} has no Linear/LSTM layers")
        return student.quantized()
    if how == "folded":
        if vocab not in VOCABS:
            raise ValueError(f"vocab must be one of {', '.join(VOCABS)}, got {vocab!r}")
        keep = None
        if vocab == "transfer":
            if not texts:
                raise ValueError("vocab=transfer needs the transfer-set texts")
            keep = reachable_ids(student.tokenizer, texts, int(student.hparams["max_length"]))
        return FoldedBiLSTM.from_student(student, keep_ids=keep, dtype=dtype)
    raise ValueError(f"unknown export {how!r}; expected one of {', '.join(EXPORTS)}")
