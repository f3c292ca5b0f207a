/*
 * QEMU TCG plugin (API version 1, QEMU 7.2 user mode): executed AArch64 instructions by class,
 * snapshotted at markers the guest sets with an unused syscall number.
 *
 *   qemu-aarch64 -plugin ./libinsn_classes.so,out=/tmp/counts.txt PROG
 *   guest: syscall(MARK_SYSCALL, tag)  ->  one line "mark TAG c0 c1 ..." (running totals) in OUT
 *
 * Classes (by the 32-bit encoding, Arm ARM "A64 instruction set encoding"): dot product
 * (SDOT/UDOT/USDOT/SUDOT, vector and by element); integer SIMD multiply and multiply-accumulate
 * (MUL/MLA/MLS, SMULL/SMLAL and kin, SQDMULH, by-element forms: the multiplier pipe), with the
 * 128-bit (Q) forms of the non-widening ones apart; integer SIMD accumulate (SADALP/UADALP,
 * SABA/SABAL, SSRA/USRA/SRSRA/URSRA: the other pipe on both cores); floating-point multiply and
 * multiply-accumulate (FMUL/FMLA/FMLS vector and by element, scalar FMUL/FMADD family), with the
 * 128-bit vector forms apart; other 128-bit FP vector arithmetic (FADD, FMAX, FCVT, SCVTF, ...);
 * other SIMD/FP; loads; stores; branches/system; other scalar. The Q forms are apart because a
 * core with 64-bit FP/ASIMD pipes (Cortex-A72) runs each as two halves.
 * Counting: per translation block, one inline add per class present (a block left early by an
 * exception is counted whole); the counters are shared by all guest threads without atomics, so
 * measure at one thread. The plugin API is declared here (its header is not packaged by Debian).
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num,
                                              uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4,
                                              uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

#define MARK_SYSCALL 0x5F3E  /* no AArch64 Linux syscall has this number: the kernel answers ENOSYS */

enum { DOT, INT_MAC, INT_MAC_Q, INT_ACC, FP_MAC, FP_MAC_Q, FP_Q, SIMD_OTHER, LOAD, STORE, BRANCH, SCALAR, NCLASS };
static const char *NAMES[NCLASS] = {"dot", "int_mac", "int_mac_q", "int_acc", "fp_mac", "fp_mac_q", "fp_q",
                                    "simd_other", "load", "store", "branch", "scalar"};
static uint64_t counts[NCLASS];
static FILE *out;

static int match(uint32_t i, uint32_t mask, uint32_t value) { return (i & mask) == value; }

static int is_load(uint32_t i)
{
    uint32_t group = (i >> 27) & 7;                     /* bits 29:27 of a load/store */
    if (group == 3) return 1;                           /* literal */
    if (group == 1 || group == 5) return (i >> 22) & 1; /* exclusive/ordered, SIMD structures; pairs */
    if (((i >> 24) & 1) == 0 && ((i >> 21) & 1) && ((i >> 10) & 3) == 0) return 1;  /* atomics */
    uint32_t opc = (i >> 22) & 3, v = (i >> 26) & 1, size = i >> 30;
    return (v && size == 0) ? (opc & 1) : opc != 0;     /* SIMD 8/128-bit: opc 10 is STR q */
}

/* a vector instruction's class by its 128-bit (Q, bit 30) form */
static int by_width(uint32_t i, int d_form, int q_form) { return (i >> 30) & 1 ? q_form : d_form; }

static int simd_class(uint32_t i)
{
    if (match(i, 0x9FE0F400, 0x0E809400)                /* SDOT/UDOT/USDOT (vector) */
        || match(i, 0x9FC0F400, 0x0F80E000)             /* SDOT/UDOT (by element) */
        || match(i, 0xBF40F400, 0x0F00F000))            /* SUDOT/USDOT (by element) */
        return DOT;
    if (match(i, 0x9F200400, 0x0E200400)) {             /* three same: opcode bits 15:11 */
        uint32_t op = (i >> 11) & 0x1F;
        if (op == 0x12 || op == 0x13 || op == 0x16) return by_width(i, INT_MAC, INT_MAC_Q);  /* MLA/MLS, MUL, SQDMULH */
        if (op == 0x0F) return INT_ACC;                              /* SABA/UABA */
        if (op == 0x19 || op == 0x1B) return by_width(i, FP_MAC, FP_MAC_Q); /* FMLA/FMLS, FMUL/FMULX */
        return op >= 0x18 ? by_width(i, SIMD_OTHER, FP_Q) : SIMD_OTHER;     /* FADD, FMAX, FCMxx, FDIV, ... */
    }
    if (match(i, 0x9F200C00, 0x0E200000)) {             /* three different: SMLAL, SMULL, ... */
        uint32_t op = (i >> 12) & 0xF;
        if (op == 5) return INT_ACC;                                 /* SABAL/UABAL */
        return (op >= 8 && op <= 14) ? INT_MAC : SIMD_OTHER;
    }
    if (match(i, 0x9F3E0C00, 0x0E200800)) {             /* two-register misc: opcode bits 16:12 */
        uint32_t op = (i >> 12) & 0x1F;
        if (op == 6) return INT_ACC;                                 /* SADALP/UADALP */
        int fp = op == 0x16 || op == 0x17 || op >= 0x18 || (op >= 0x0C && op <= 0x0F && (i >> 23) & 1);
        return fp ? by_width(i, SIMD_OTHER, FP_Q) : SIMD_OTHER;             /* FCVT*, FRINT*, [SU]CVTF, FABS, ... */
    }
    if (match(i, 0x9F800400, 0x0F000400) && (i >> 19) & 0xF) {  /* shift by immediate (immh != 0) */
        uint32_t op = (i >> 11) & 0x1F;
        if (op == 0x02 || op == 0x06) return INT_ACC;               /* [SU]SRA, [SU]RSRA */
        return (op == 0x1C || op == 0x1F) ? by_width(i, SIMD_OTHER, FP_Q) : SIMD_OTHER;  /* fixed-point [SU]CVTF, FCVTZ[SU] */
    }
    if (match(i, 0x9F000400, 0x0F000000)) {             /* vector x indexed element */
        uint32_t op = (i >> 12) & 0xF;
        if (op == 1 || op == 5 || op == 9) return by_width(i, FP_MAC, FP_MAC_Q);      /* FMLA, FMLS, FMUL(X) */
        int widening = op == 2 || op == 3 || op == 6 || op == 7 || op == 10 || op == 11;  /* [SU]MLAL, ... */
        return widening ? INT_MAC : by_width(i, INT_MAC, INT_MAC_Q);                   /* MUL, MLA, SQDMULH, ... */
    }
    if (match(i, 0x5F000000, 0x1F000000)) return FP_MAC;     /* FMADD/FMSUB/FNMADD/FNMSUB */
    if (match(i, 0x5F200C00, 0x1E200800) && (((i >> 12) & 0xF) == 0 || ((i >> 12) & 0xF) == 8))
        return FP_MAC;                                  /* scalar FMUL/FNMUL */
    return SIMD_OTHER;
}

static int classify(uint32_t i)
{
    uint32_t op0 = (i >> 25) & 0xF;
    if ((op0 & 0xE) == 0xA) return BRANCH;              /* branches, exceptions, system */
    if ((op0 & 0x5) == 0x4) return is_load(i) ? LOAD : STORE;
    if ((op0 & 0x7) == 0x7) return simd_class(i);       /* SIMD and floating point */
    return SCALAR;
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    uint64_t n[NCLASS] = {0};
    size_t len = qemu_plugin_tb_n_insns(tb);
    for (size_t k = 0; k < len; k++) {
        uint32_t word;
        memcpy(&word, qemu_plugin_insn_data(qemu_plugin_tb_get_insn(tb, k)), sizeof word);
        n[classify(word)]++;
    }
    for (int c = 0; c < NCLASS; c++)
        if (n[c]) qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &counts[c], n[c]);
}

static void write_line(const char *what, uint64_t tag)
{
    fprintf(out, "%s %" PRIu64, what, tag);
    for (int c = 0; c < NCLASS; c++) fprintf(out, " %" PRIu64, counts[c]);
    fputc('\n', out);
    fflush(out);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    if (num == MARK_SYSCALL) write_line("mark", a1);
}

static void at_exit(qemu_plugin_id_t id, void *userdata) { write_line("exit", 0); fclose(out); }

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    const char *path = NULL;
    for (int k = 0; k < argc; k++)
        if (strncmp(argv[k], "out=", 4) == 0) path = argv[k] + 4;
    if (!path) { fprintf(stderr, "insn_classes: give out=FILE\n"); return -1; }
    out = fopen(path, "w");
    if (!out) { perror(path); return -1; }
    fprintf(out, "classes");
    for (int c = 0; c < NCLASS; c++) fprintf(out, " %s", NAMES[c]);
    fputc('\n', out);
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
