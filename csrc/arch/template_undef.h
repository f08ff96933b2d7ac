/* Ends one element type's instantiation of the templates (ukernel, direct, winograd, pool) in an ISA file: undefines the
 * per-type parameters so the next type can define its own. The tile sizes of the direct kernels (DFB DNV WFB
 * WTB) are shared by both types and stay defined. */
#undef T
#undef VEC
#undef VL
#undef MR
#undef NV
#undef VZERO
#undef VLOAD
#undef VLOADU
#undef VSTOREU
#undef VSET1
#undef VFMA
#undef VMUL
#undef VADD
#undef VRELU
#undef VHSUM
#undef UKR_NAME
#undef DIRECT_NAME
#undef WGRAD_NAME
#undef BCAST_NAME
#undef WINO_NAME
#undef VSTORE_FIRST
#undef VMAXN
#undef VEVEN
#undef VODD
#undef VMASK_T
#undef VMASK
#undef VLOADM
#undef VSTOREN
#undef POOL_NAME
