// SPDX-License-Identifier: GPL-2.0-or-later
/* kernel/panic.c, kernel/crash_core.c, kernel/kexec_core.c, arch/powerpc/kernel/traps.c */
#include "kernel.h"

#define PANIC_CPU_INVALID -1

atomic_t panic_cpu = { PANIC_CPU_INVALID };
int panic_timeout;
unsigned long panic_on_oops = 1;

/* crash_notes = alloc_percpu(note_buf_t) at boot: the per-CPU notes live here. */
static DEFINE_PER_CPU(note_buf_t, crash_notes_percpu);
note_buf_t __percpu *crash_notes = &crash_notes_percpu;

/* kernel/crash_core.c (2.6.32: a static note) */
u32 vmcoreinfo_note[VMCOREINFO_NOTE_SIZE / 4];
char vmcoreinfo_data[VMCOREINFO_BYTES];
size_t vmcoreinfo_size;

/*
 * arch/powerpc/kernel/head_64.S: the kernel's top-level page table,
 * PGD_TABLE_SIZE bytes: 1 << PGD_INDEX_SIZE entries, 16 with 64K pages and
 * 512 with 4K pages (2.6.32). One image serves both page sizes, so it
 * reserves the larger.
 */
pgd_t swapper_pg_dir[1 << 9] __aligned(4096);

noinline void crash_save_cpu(struct pt_regs *regs, int cpu)
{
	u32 *buf = (u32 *)&crash_notes_percpu + __per_cpu_offset[cpu] / 4;

	buf[0] = sizeof("CORE");
	buf[1] = ELF_PRSTATUS_SIZE;
	buf[2] = 1; /* NT_PRSTATUS */
	buf[3 + 2 + ELF_PRSTATUS_SIZE / 4] = (u32)regs->nip;
}

noinline void ppc_save_regs(struct pt_regs *regs)
{
	regs->nip = (unsigned long)__builtin_return_address(0);
	regs->link = regs->nip;
	regs->gpr[1] = (unsigned long)__builtin_frame_address(0);
}

noinline void crash_kexec_prepare_cpus(int cpu)
{
	unsigned int i;

	for (i = 0; i < nr_cpu_ids; i++)
		if (i != cpu)
			paca[i].kexec_state = 1;
}

noinline void machine_crash_shutdown(struct pt_regs *regs)
{
	int cpu = raw_smp_processor_id();

	crash_kexec_prepare_cpus(cpu);
	crash_save_cpu(regs, cpu);
}

noinline void __crash_kexec(struct pt_regs *regs)
{
	struct pt_regs fixed_regs;

	if (!regs) {
		ppc_save_regs(&fixed_regs);
		regs = &fixed_regs;
	}
	vmcoreinfo_size = sizeof(vmcoreinfo_data);
	machine_crash_shutdown(regs);
}

noinline void panic_smp_self_stop(void)
{
	for (;;)
		barrier();
}

void __noreturn panic(const char *fmt, ...)
{
	static char buf[1024];
	va_list args;
	int this_cpu, old_cpu;

	this_cpu = raw_smp_processor_id();
	old_cpu = __sync_val_compare_and_swap(&panic_cpu.counter, PANIC_CPU_INVALID, this_cpu);
	if (old_cpu != PANIC_CPU_INVALID && old_cpu != this_cpu)
		panic_smp_self_stop();
	__crash_kexec(NULL);
	va_start(args, fmt);
	vsnprintf(buf, sizeof(buf), fmt, args);
	va_end(args);
	printk("\0010Kernel panic - not syncing: %s\n", buf);
	dump_stack();
	for (;;)
		barrier();
}

noinline void oops_end(unsigned long flags, struct pt_regs *regs, int signr)
{
	printk("\0014---[ end trace %016lx ]---\n", flags);
	if (panic_on_oops)
		panic("Fatal exception");
}

noinline int __die(const char *str, struct pt_regs *regs, long err)
{
	printk("\0010Oops: %s, sig: %ld [#%d]\n", str, err, 1);
	show_regs(regs);
	return 0;
}

noinline void die(const char *str, struct pt_regs *regs, long err)
{
	unsigned long flags = regs->msr;

	if (__die(str, regs, err))
		err = 0;
	oops_end(flags, regs, err);
}
