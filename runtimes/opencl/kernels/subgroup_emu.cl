// The sub-group functions matrix.cl's matvec_sg uses, emulated with local memory for a
// device that has none (PoCL), so that the sub-group path's indexing and reduction run in
// CI. A sub-group is SG_EMU consecutive work-items of a work-group of at most 64. Every
// function must be reached by the whole work-group (barriers), which matvec_sg keeps to.
#define SG_SCRATCH local float sg_scratch[64]
#define get_sub_group_size() (SG_EMU)
#define get_sub_group_local_id() ((int)get_local_id(0) % SG_EMU)
#define get_sub_group_id() ((int)get_local_id(0) / SG_EMU)
#define get_num_sub_groups() ((int)get_local_size(0) / SG_EMU)
#define sub_group_reduce_add(v) sg_emu_sum((v), sg_scratch)

inline float sg_emu_sum(float v, local float* part) {
    int t = get_local_id(0), lane = t % SG_EMU;
    barrier(CLK_LOCAL_MEM_FENCE);  // a previous call's readers are done
    part[t] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    float s = 0.0f;
    for (int k = 0; k < SG_EMU; k++) s += part[t - lane + k];
    return s;
}
