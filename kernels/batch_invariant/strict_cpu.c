/* Strict mode's CPU kernels: the GEMM, the softmax attention and the linear-attention
 * recurrence, each written so that every output element is computed by one fixed sequence of
 * IEEE roundings that depends on that element's own inputs only — not on the number of rows,
 * a row's place among them, the other rows' contents, the memory alignment or the thread
 * count.  The trainer's forward and the rollout engine call these same functions, so a token's
 * result is the same bits in a training batch, a prefill piece or a decode step.
 *
 * Compiled with -ffp-contract=off (kernels/native.py): no fused multiply-adds, so a vectorised
 * lane and the scalar remainder round alike (a multiply, then an add) and the compiler's choice
 * of vector width changes no bit.  Nothing here reassociates a sum: every accumulation runs in
 * the order the loops spell out.  OpenMP splits the work by whole output rows / (row, head)
 * pairs, never inside one element's sum.
 *
 * Definitions (docs/decisions.md, "Strict mode"):
 *   linear      y[n, o] = (((x[n,0] w[o,0]) + x[n,1] w[o,1]) + …) + x[n,K-1] w[o,K-1]   fp32
 *   sigmoid     1 / (1 + exp(−x)) (glibc's expf: one function of x);  silu  x · sigmoid(x)
 *   attention   s_j = scale · (q·k_j, summed as 8 fp32 lanes of d then the lanes in order),
 *               m = max s_j, P_j = exp(s_j − m), o = Σ_j P_j v_j / Σ_j P_j (j ascending, fp64)
 *   recurrence  S ← λ S + kᵀ v (fp64, stored fp32), o = scale · q S (fp64 sums, i ascending):
 *               decode_cpu.c's step, token after token
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "../linear_attention/recurrence_token.h"

#define ROWS 4      /* rows per register block of the GEMM */
#define COLS 16     /* output columns per register block: 4 × 16 fp32 accumulators = 8 AVX2 registers */
#define LANES 8     /* partial sums of the attention's q·k */
#define MAX_D 256   /* head dim bound (accumulator arrays) */

typedef float vec8 __attribute__((vector_size(32)));  /* 8 fp32 lanes: element-wise IEEE ops */

static inline vec8 load8(const float *p)
{
    vec8 v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

/* One register block: y[r, c] for r < rows (≤ ROWS), c < cols (≤ COLS) from COLS columns of Wᵀ
 * (wt: ld columns a row, padded with zeros to a whole number of COLS).  The k loop in order,
 * acc = acc + x·w per element; a missing row (rows < ROWS) repeats row 0 and is not stored. */
static void linear_block(const float *x, int64_t K, const float *wt, int64_t ld, int64_t rows, int64_t cols,
                         float *y, int64_t ldy)
{
    const float *xr[ROWS];
    for (int r = 0; r < ROWS; ++r)
        xr[r] = x + (r < rows ? r : 0) * K;
    vec8 acc[ROWS][COLS / 8] = {{{0}}};
    for (int64_t k = 0; k < K; ++k) {
        const float *w = wt + k * ld;
        const vec8 w0 = load8(w), w1 = load8(w + 8);
        for (int r = 0; r < ROWS; ++r) {
            const float xk = xr[r][k];  /* broadcast to the 8 lanes */
            acc[r][0] += xk * w0;
            acc[r][1] += xk * w1;
        }
    }
    for (int64_t r = 0; r < rows; ++r) {
        float out[COLS];
        __builtin_memcpy(out, acc[r], sizeof out);
        for (int64_t c = 0; c < cols; ++c)
            y[r * ldy + c] = out[c];
    }
}

/* y [N, O] = x [N, K] · W_gᵀ for the rows of group g: rows ends[g-1]..ends[g]-1 (ends[-1] = 0)
 * use w + g · group_stride, a [O, K] matrix (rows contiguous, row stride K).  ends NULL: one
 * group, a plain linear. */
void lockstep_bi_linear_f32(const float *x, int64_t N, int64_t K, const float *w, int64_t O,
                            const int64_t *ends, int64_t groups, int64_t group_stride, float *y)
{
    const int64_t single = N;
    if (!ends) {  /* one group: every row */
        ends = &single;
        groups = 1;
    }
    /* Wᵀ packed [groups, K, ld]: a row of it is what a k step reads; zero columns up to a whole
     * register block (ld a multiple of COLS) */
    const int64_t ld = (O + COLS - 1) / COLS * COLS;
    float *wt = malloc(sizeof(float) * groups * K * ld);
    /* the work items: (row block, column block) pairs, row blocks never straddling two groups */
    int64_t blocks = 0, start = 0;
    for (int64_t g = 0; g < groups; ++g) {
        blocks += (ends[g] - start + ROWS - 1) / ROWS;
        start = ends[g];
    }
    int64_t *block_row = malloc(sizeof(int64_t) * (blocks + 1)), *block_group = malloc(sizeof(int64_t) * (blocks + 1));
    if (!wt || !block_row || !block_group)
        abort();
    int64_t b = 0;
    start = 0;
    for (int64_t g = 0; g < groups; ++g) {
        for (int64_t r = start; r < ends[g]; r += ROWS, ++b) {
            block_row[b] = r;
            block_group[b] = g;
        }
        start = ends[g];
    }
    const int64_t col_blocks = ld / COLS;
    const int parallel = N * K * O >= (1 << 22);
    #pragma omp parallel if (parallel)
    {
        #pragma omp for schedule(static)
        for (int64_t gk = 0; gk < groups * K; ++gk) {
            const int64_t g = gk / K, k = gk % K;
            const float *wg = w + g * group_stride + k;
            float *row = wt + gk * ld;
            for (int64_t o = 0; o < O; ++o)
                row[o] = wg[o * K];
            for (int64_t o = O; o < ld; ++o)
                row[o] = 0.0f;
        }
        #pragma omp for schedule(dynamic, 4)
        for (int64_t item = 0; item < blocks * col_blocks; ++item) {
            const int64_t rb = item / col_blocks, c0 = (item % col_blocks) * COLS;
            const int64_t r0 = block_row[rb], g = block_group[rb];
            const int64_t rows = (ends[g] - r0 < ROWS) ? ends[g] - r0 : ROWS;
            const int64_t cols = (O - c0 < COLS) ? O - c0 : COLS;
            linear_block(x + r0 * K, K, wt + g * K * ld + c0, ld, rows, cols, y + r0 * O + c0, O);
        }
    }
    free(wt);
    free(block_row);
    free(block_group);
}

/* y = sigmoid(x) = 1 / (1 + exp(−x)), or (silu) x · sigmoid(x), element by element. */
void lockstep_bi_sigmoid_f32(const float *x, int64_t n, int silu, float *y)
{
    #pragma omp parallel for schedule(static) if (n >= (1 << 18))
    for (int64_t i = 0; i < n; ++i) {
        const float s = 1.0f / (1.0f + expf(-x[i]));
        y[i] = silu ? x[i] * s : s;
    }
}

/* q·k as LANES partial sums (lane l takes d ≡ l mod LANES, in order), then the lanes in order. */
static float dot_lanes(const float *q, const float *k, int64_t D)
{
    float lane[LANES] = {0};
    int64_t d = 0;
    for (; d + LANES <= D; d += LANES)
        for (int l = 0; l < LANES; ++l)
            lane[l] += q[d + l] * k[d + l];
    for (int l = 0; d < D; ++d, ++l)
        lane[l] += q[d] * k[d];
    float sum = lane[0];
    for (int l = 1; l < LANES; ++l)
        sum += lane[l];
    return sum;
}

/* Causal GQA attention: q [G, Tq, H, D] (contiguous); positions [G, Tq]: query (g, t) sees
 * keys 0..positions[g, t] (keys past it are never read).  out [G, Tq, H, D].
 * Where key j of sequence g and KV head h sits (its D values contiguous, v at the same offset
 * from `v` as k from `k`): in block table[g · table_stride + j / block] at
 *     block · kv_stride[0] + (j % block) · kv_stride[1] + h · kv_stride[2]
 * — vLLM's paged KV cache through its block table, or (one block of S keys per sequence,
 * table[g] = g) a [G, S, KV, D] tensor. */
void lockstep_bi_attention_f32(const float *q, const float *k, const float *v, int64_t G, int64_t Tq,
                               int64_t H, int64_t KV, int64_t D, const int64_t *table, int64_t table_stride,
                               int64_t block, const int64_t *kv_stride, const int64_t *positions, float scale,
                               float *out)
{
    const int64_t rep = H / KV, sb = kv_stride[0], ss = kv_stride[1], sh = kv_stride[2];
    #pragma omp parallel for schedule(dynamic, 8) if (G * Tq * H * D >= (1 << 16))
    for (int64_t gth = 0; gth < G * Tq * H; ++gth) {
        const int64_t gt = gth / H, h = gth % H, g = gt / Tq;
        const int64_t p = positions[gt], head = (h / rep) * sh;
        const int64_t *blocks = table + g * table_stride;
        const float *qi = q + gth * D;
        float *o = out + gth * D;
        float m = -INFINITY;
        for (int64_t j = 0; j <= p; ++j) {
            const float s = scale * dot_lanes(qi, k + blocks[j / block] * sb + (j % block) * ss + head, D);
            m = s > m ? s : m;
        }
        double acc[MAX_D], total = 0.0;
        for (int64_t d = 0; d < D; ++d)
            acc[d] = 0.0;
        for (int64_t j = 0; j <= p; ++j) {  /* the scores again (the same bits) rather than a buffer */
            const int64_t at = blocks[j / block] * sb + (j % block) * ss + head;
            const double pj = expf(scale * dot_lanes(qi, k + at, D) - m);
            const float *vj = v + at;
            total += pj;
            for (int64_t d = 0; d < D; ++d)
                acc[d] += pj * vj[d];
        }
        for (int64_t d = 0; d < D; ++d)
            o[d] = (float)(acc[d] / total);
    }
}

/* The linear-attention recurrence, token after token: q, k, v [B, T, H, D] (contiguous);
 * sequence b's state is the [H, D, D] at state + slots[b] · slot_stride (slots NULL: b), updated
 * in place by its first lengths[b] tokens (lengths NULL: T); later tokens' outputs are 0.
 * lam [H] = exp(decay); out [B, T, H, D]. */
void lockstep_bi_recurrence_f32(const float *q, const float *k, const float *v, int64_t B, int64_t T,
                                int64_t H, int64_t D, const float *lam, double scale, float *state,
                                int64_t slot_stride, const int64_t *slots, const int64_t *lengths, float *out)
{
    #pragma omp parallel for schedule(static) if (B * H * T * D * D >= 65536)
    for (int64_t bh = 0; bh < B * H; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        const int64_t n = lengths ? lengths[b] : T;
        float *S = state + (slots ? slots[b] : b) * slot_stride + h * D * D;
        const double decay = lam[h];
        for (int64_t t = 0; t < T; ++t) {
            const int64_t row = ((b * T + t) * H + h) * D;
            float *o = out + row;
            if (t >= n) {
                for (int64_t j = 0; j < D; ++j)
                    o[j] = 0.0f;
                continue;
            }
            lockstep_recurrence_token(q + row, k + row, v + row, S, D, decay, scale, o);
        }
    }
}
