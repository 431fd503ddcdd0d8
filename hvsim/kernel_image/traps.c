// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Faults, interrupts and watchdogs: arch/powerpc/mm/fault.c,
 * arch/powerpc/kernel/traps.c, arch/powerpc/kernel/irq.c,
 * arch/powerpc/kernel/exceptions-64s.S, kernel/hung_task.c, fs/jbd2/journal.c.
 */
#include "kernel.h"

#define SIGSEGV 11
#define SIGBUS 7

unsigned long sysctl_hung_task_timeout_secs = 120;
int sysctl_hung_task_panic = 1;
unsigned long sysctl_hung_task_check_count = 4194304;

/*
 * arch/powerpc/kernel/irq.c (CONFIG_IRQSTACKS): the start of each CPU's
 * hard and soft interrupt stacks, THREAD_SIZE each, which setup_64.c's
 * irqstack_early_init() allocates below 256 MiB (hvsim lays them out).
 */
struct thread_info *softirq_ctx[NR_CPUS];
struct thread_info *hardirq_ctx[NR_CPUS];

noinline void bad_page_fault(struct pt_regs *regs, int sig)
{
	printk("\0011BUG: Kernel NULL pointer dereference on read at 0x%08lx\n", regs->dar);
	printk("\0011Faulting instruction address: 0x%016lx\n", regs->nip);
	die("Kernel access of bad area", regs, sig);
}

noinline int do_page_fault(struct pt_regs *regs, unsigned long address, unsigned long error_code)
{
	if (address < PAGE_SIZE) {
		bad_page_fault(regs, SIGSEGV);
		return 0;
	}
	return error_code ? SIGBUS : 0;
}

/* The data storage interrupt's C entry: its frame holds the interrupted registers. */
noinline void data_access_common(struct pt_regs *regs)
{
	regs->trap = 0x300;
	regs->result = do_page_fault(regs, regs->dar, regs->dsisr);
}

noinline void machine_check_exception(struct pt_regs *regs)
{
	printk("\0010Machine check in kernel mode.\n");
	die("Machine check", regs, SIGBUS);
}

noinline void machine_check_common(struct pt_regs *regs)
{
	regs->trap = 0x200;
	machine_check_exception(regs);
}

/* kernel/hung_task.c */
noinline void check_hung_task(struct task_struct *t, unsigned long timeout)
{
	printk("\0013INFO: task %s:%d blocked for more than %ld seconds.\n", t->comm, t->pid, timeout);
	if (sysctl_hung_task_panic)
		panic("hung_task: blocked tasks");
}

noinline void check_hung_uninterruptible_tasks(unsigned long timeout)
{
	struct list_head *p;

	for (p = init_task.tasks.next; p != &init_task.tasks; p = p->next) {
		struct task_struct *t = (struct task_struct *)((char *)p - __builtin_offsetof(struct task_struct, tasks));

		if (t->state == TASK_UNINTERRUPTIBLE)
			check_hung_task(t, timeout);
	}
}

noinline int watchdog(void *dummy)
{
	for (;;) {
		unsigned long timeout = sysctl_hung_task_timeout_secs;

		check_hung_uninterruptible_tasks(timeout);
		schedule_timeout(timeout);
	}
	return 0;
}

/* fs/jbd2: a journal thread waiting for its buffers */
noinline void __wait_on_buffer(void *bh)
{
	current->state = TASK_UNINTERRUPTIBLE;
	io_schedule();
}

noinline int jbd2_journal_commit_transaction(void *journal)
{
	__wait_on_buffer(journal);
	return 0;
}

noinline int kjournald2(void *arg)
{
	for (;;) {
		jbd2_journal_commit_transaction(arg);
		schedule();
	}
	return 0;
}
