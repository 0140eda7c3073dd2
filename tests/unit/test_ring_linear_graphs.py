"""The Ring-linear plugin's step plan on GPUs, where nothing may be read on the host (a captured
CUDA graph replays only device work): which sequences start from a zero state, and which rows
are a full graph's padding.  Run here on CPU tensors; the kernels' masked read is tested in
tests/kernels/test_linear_attention.py, the engine under graphs by the GPU-marked
tests/integration/test_ring_linear_cuda_graphs.py."""

from dataclasses import dataclass

import numpy as np
import torch

from rollout.ring_linear.step_plan import StepPlan, fresh_rows, fresh_slots

# One step, decodes first (vLLM's order): a 1-token prompt arriving as a decode (fresh, slot 4),
# a continuing decode (slot 2), a padding row of a full CUDA graph (seq_len 0, vLLM's null block
# 0); then prefills: a whole 3-token prompt (fresh, slot 5) and a 2-token chunk continuing a
# sequence with 5 tokens of context (slot 1).
STARTS, SEQ_LENS, SLOTS = [0, 1, 2, 3, 6, 8], [1, 9, 0, 3, 7], [4, 2, 0, 5, 1]
FRESH = [True, False, False, True, False]


@dataclass
class Metadata:
    """The fields of vLLM's ``LinearAttentionMetadata`` the plan reads (the engine tests run the
    real one; importing vLLM would cost this unit test seconds)."""

    num_prefills: int
    num_prefill_tokens: int
    num_decodes: int
    num_decode_tokens: int
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    state_indices_tensor: torch.Tensor


def metadata() -> Metadata:
    i32 = lambda x: torch.tensor(x, dtype=torch.int32)  # noqa: E731
    return Metadata(num_prefills=2, num_prefill_tokens=5, num_decodes=3, num_decode_tokens=3,
                    query_start_loc=i32(STARTS), seq_lens=i32(SEQ_LENS), state_indices_tensor=i32(SLOTS))


def test_fresh_rows_are_the_sequences_with_empty_context():
    for lib in (np.array, torch.tensor):
        starts, seq_lens = lib(STARTS), lib(SEQ_LENS)
        assert list(fresh_rows(starts, seq_lens)) == FRESH
        assert list(fresh_slots(lib(SLOTS), starts, seq_lens)) == [4, 5]


def test_step_plan_without_host_reads_masks_fresh_and_padding_rows():
    host = StepPlan(metadata(), "layer", num_slots=8)
    assert host.fresh.tolist() == [4, 5] and host.decode_fresh is None  # CPU: slots cleared up front
    device = StepPlan(metadata(), "layer", num_slots=8, on_host=False)
    assert device.fresh is None  # nothing cleared on the host: the kernels read fresh states as 0
    assert device.decode_fresh.tolist() == [True, False, False]
    assert device.prefill_fresh.tolist() == [True, False]
    assert device.decode_slots.tolist() == [4, 2, -1]  # the padding row updates no state
    assert device.prefill_slots.tolist() == [5, 1] and device.prefill_cu.tolist() == [0, 3, 5]
