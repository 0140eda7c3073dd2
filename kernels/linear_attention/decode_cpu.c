/* The CPU decode step of the linear-attention recurrence, one token per row, in one pass over
 * the states (its definition in PyTorch: recurrent.py, decode_step):
 *
 *     S ← λ S + kᵀ v          o = scale · q S          (per row, per head; S fp32 [D, D])
 *
 * For each (row, head) the state slice is read once and written once (recurrence_token.h, the
 * arithmetic strict mode's recurrence shares): every rounding is fixed by (row, head) alone, so a
 * row's output and state do not depend on the batch it is decoded in; no fused multiply-adds,
 * the same roundings as the PyTorch definition's separate fp64 ops.
 *
 * Layout: qkv [B, 3, H, D] float (q, k, v of a row, contiguous); state: slot s of the pool
 * starts at state + s * slot_stride, each slot a contiguous [H, D, D]; rows [B] int64, distinct
 * and in range (the caller checks them: StateSlots); lam [H] = exp(decay); out [B, H, D] float.
 */
#include <stdint.h>

#include "recurrence_token.h"

void lockstep_decode_step_f32(const float *qkv, int64_t B, int64_t H, int64_t D, const float *lam,
                              double scale, float *state, int64_t slot_stride, const int64_t *rows,
                              float *out)
{
    #pragma omp parallel for schedule(static) if (B * H * D * D >= 65536)
    for (int64_t bh = 0; bh < B * H; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        const float *q = qkv + (b * 3 * H + h) * D, *k = q + H * D, *v = k + H * D;
        float *S = state + rows[b] * slot_stride + h * D * D;
        lockstep_recurrence_token(q, k, v, S, D, lam[h], scale, out + bh * D);
    }
}
