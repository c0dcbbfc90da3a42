// Undefines the per-instruction-set parameters of bf16_tile.h (see there), after an instruction
// set's instances in bf16_kernels.c.
#undef TARGET
#undef VEC
#undef LANES
#undef vzero
#undef vloadf
#undef vfma
#undef vhsum
#undef vadd
#undef vloadf_first
#undef vloadf_last
#undef R2
#undef R3
#undef R4
