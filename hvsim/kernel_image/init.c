// SPDX-License-Identifier: GPL-2.0-or-later
/* init/main.c, init/init_task.c, init/version.c, kernel/cpu.c, arch/powerpc/kernel/setup_64.c */
#include "kernel.h"

#define UTS_RELEASE "2.6.32-hvsim"
#define UTS_VERSION "#1 SMP Tue Jun 15 10:19:54 EDT 2010"

/* Room for the running kernel's banner, which hvsim writes at boot. */
const char linux_banner[256] __used =
	"Linux version " UTS_RELEASE " (hvsim@build.hvdump) "
	"(gcc version 4.4.4 20100726 (Red Hat 4.4.4-13) (GCC) ) " UTS_VERSION "\n";

struct uts_namespace init_uts_ns = {
	.kref = { .refcount = { .refs = { 2 } } },
	.name = {
		.sysname = "Linux",
		.nodename = "(none)",
		.release = UTS_RELEASE,
		.version = UTS_VERSION,
		.machine = "ppc64",
		.domainname = "(none)",
	},
};

union thread_union init_thread_union __section(".data..init_task") __aligned(THREAD_SIZE);
struct signal_struct init_signals = { .nr_threads = 1, .leader = 0 };

struct task_struct init_task __section(".data..init_task") __aligned(64) = {
	.state = TASK_RUNNING,
	.stack = &init_thread_union,
	.usage = { .refs = { 2 } },
	.flags = PF_KTHREAD | PF_IDLE,
	.prio = 120,
	.static_prio = 120,
	.normal_prio = 120,
	.tasks = { &init_task.tasks, &init_task.tasks },
	.active_mm = &init_mm,
	.real_parent = &init_task,
	.parent = &init_task,
	.children = { &init_task.children, &init_task.children },
	.sibling = { &init_task.sibling, &init_task.sibling },
	.group_leader = &init_task,
	.thread_group = { &init_task.thread_group, &init_task.thread_group },
	.thread_node = { &init_signals.thread_head, &init_signals.thread_head },
	.comm = "swapper",
	.signal = &init_signals,
};

struct mm_struct init_mm = { .mm_users = { 2 }, .mm_count = { 1 } };

struct cpumask __cpu_possible_mask, __cpu_online_mask, __cpu_present_mask, __cpu_active_mask;
unsigned int nr_cpu_ids = NR_CPUS;
unsigned long __per_cpu_offset[NR_CPUS] __cacheline_aligned;
struct paca_struct paca[NR_CPUS];
unsigned long volatile jiffies;
char *saved_command_line;

/* arch/powerpc/platforms/pseries: the hypervisor call an idle CPU waits in. */
noinline long plpar_hcall_norets(unsigned long opcode, ...)
{
	barrier();
	return opcode == 0xe0 ? 0 : -1;
}

noinline void cede_processor(void)
{
	get_paca()->kexec_state = 0;
	plpar_hcall_norets(0xe0 /* H_CEDE */);
	barrier();
}

noinline void pseries_lpar_idle(void)
{
	get_paca()->saved_msr = 1;
	cede_processor();
	get_paca()->saved_msr = 0;
}

noinline void arch_cpu_idle(void)
{
	pseries_lpar_idle();
	barrier();
}

noinline void do_idle(void)
{
	while (!current->thread_info.flags) {
		arch_cpu_idle();
		barrier();
	}
	schedule();
}

noinline void cpu_startup_entry(int state)
{
	for (;;) {
		do_idle();
		barrier();
	}
}

noinline void rest_init(void)
{
	current->flags |= PF_IDLE;
	schedule();
	cpu_startup_entry(0);
}

noinline __init void arch_call_rest_init(void)
{
	rest_init();
	barrier();
}

noinline __init void start_kernel(void)
{
	printk("\0015Linux version %s\n", init_uts_ns.name.release);
	saved_command_line = "root=/dev/sda2 ro crashkernel=256M";
	arch_call_rest_init();
}

noinline void start_secondary(void *unused)
{
	get_paca()->cpu_start = 1;
	cpu_startup_entry(0);
}

/* arch/powerpc/kernel/head_64.S: the boot CPU's and the secondaries' first frames. */
ASM_ENTRY(start_here_common, "\tbl start_kernel\n\tnop\n1:\tb 1b");
ASM_ENTRY(start_secondary_prolog, "\tbl start_secondary\n\tnop\n1:\tb 1b");
