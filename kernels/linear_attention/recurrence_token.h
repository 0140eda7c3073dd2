/* One token of the linear-attention recurrence for one (sequence, head), the arithmetic that the
 * fast decode step (decode_cpu.c) and strict mode's recurrence (../batch_invariant/strict_cpu.c)
 * share:
 *
 *     S ← λ S + kᵀ v          o = scale · q S          (S fp32 [D, D], row i at S + i·D)
 *
 * Row i of S at a time: the update is computed in double, stored rounded to float, and its double
 * value is added into the D double accumulators of o (o_j += q_i · S_ij, i ascending). Every
 * rounding is fixed by this (sequence, head) alone. Built with -ffp-contract=off (kernels/native.py):
 * no fused multiply-adds. D ≤ LOCKSTEP_MAX_D.
 */
#ifndef LOCKSTEP_RECURRENCE_TOKEN_H
#define LOCKSTEP_RECURRENCE_TOKEN_H

#include <stdint.h>

#define LOCKSTEP_MAX_D 256

static inline void lockstep_recurrence_token(const float *q, const float *k, const float *v, float *S,
                                             int64_t D, double decay, double scale, float *o)
{
    double acc[LOCKSTEP_MAX_D], vd[LOCKSTEP_MAX_D];
    for (int64_t j = 0; j < D; ++j) {
        acc[j] = 0.0;
        vd[j] = v[j];
    }
    for (int64_t i = 0; i < D; ++i) {
        const double ki = k[i], qi = q[i];
        float *Si = S + i * D;
        for (int64_t j = 0; j < D; ++j) {
            const double s = (double)Si[j] * decay + ki * vd[j];
            Si[j] = (float)s;
            acc[j] += qi * s;
        }
    }
    for (int64_t j = 0; j < D; ++j)
        o[j] = (float)(acc[j] * scale);
}

#endif
