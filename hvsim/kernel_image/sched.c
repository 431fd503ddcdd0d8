// SPDX-License-Identifier: GPL-2.0-or-later
/* kernel/sched/core.c, kernel/kthread.c, kernel/smpboot.c, kernel/workqueue.c, kernel/pid.c */
#include "kernel.h"

DEFINE_PER_CPU_SHARED_ALIGNED(struct rq, runqueues);

/* kernel/pid.c in 2.6.32: the hash of struct upid, sized at boot. */
struct pid_namespace init_pid_ns = {
	.kref = { .refcount = { .refs = { 2 } } },
	.last_pid = 0,
	.child_reaper = &init_task,
	.level = 0,
};
struct hlist_head *pid_hash;
unsigned int pidhash_shift = 4;
const enum pid_type __used pid_type_last = PIDTYPE_MAX;

/* fs/proc/array.c */
static const char *const task_state_array[] __used = {
	"R (running)", "S (sleeping)", "D (disk sleep)", "T (stopped)",
	"t (tracing stop)", "X (dead)", "Z (zombie)", "P (parked)", "I (idle)",
};
const char *const *task_state_names = task_state_array;

/* arch/powerpc/kernel/entry_64.S: the switch saves the non-volatile registers. */
noinline struct task_struct *_switch(struct thread_struct *prev, struct thread_struct *new)
{
	prev->ksp = new->ksp;
	barrier();
	return current;
}

noinline struct task_struct *__switch_to(struct task_struct *prev, struct task_struct *new)
{
	struct task_struct *last;

	get_paca()->__current = new;
	last = _switch(&prev->thread, &new->thread);
	new->last_switch_time = jiffies;
	return last;
}

noinline void __schedule(unsigned int sched_mode)
{
	struct task_struct *prev = current, *next;
	struct rq *rq = &runqueues;

	next = rq->idle;
	if (prev != next) {
		rq->nr_switches++;
		rq->curr = next;
		prev = __switch_to(prev, next);
	}
	rq->clock++;
}

noinline void schedule(void)
{
	do {
		__schedule(0);
	} while (current->thread_info.flags & 8);
}

noinline long schedule_timeout(long timeout)
{
	unsigned long expire = timeout + jiffies;

	schedule();
	timeout = expire - jiffies;
	return timeout < 0 ? 0 : timeout;
}

noinline void io_schedule(void)
{
	int token = current->thread_info.preempt_count;

	schedule();
	current->thread_info.preempt_count = token;
}

noinline int smpboot_thread_fn(void *data)
{
	for (;;) {
		current->state = TASK_INTERRUPTIBLE;
		schedule();
		barrier();
	}
	return 0;
}

noinline int worker_thread(void *worker)
{
	for (;;) {
		current->state = TASK_INTERRUPTIBLE;
		schedule();
		if (!worker)
			break;
	}
	return 0;
}

noinline int rcu_gp_kthread(void *unused)
{
	for (;;) {
		schedule_timeout(3);
		barrier();
	}
	return 0;
}

noinline int kswapd(void *p)
{
	for (;;) {
		current->state = TASK_INTERRUPTIBLE;
		schedule();
		barrier();
	}
	return 0;
}

int watchdog(void *dummy);
int kjournald2(void *arg);

/* The thread functions, called directly so each caller has a real call site. */
noinline int kthread(void *create)
{
	long fn = (long)create;

	switch (fn & 7) {
	case 0: return smpboot_thread_fn(create);
	case 1: return worker_thread(create);
	case 2: return rcu_gp_kthread(create);
	case 3: return kswapd(create);
	case 4: return watchdog(create);
	case 5: return kjournald2(create);
	}
	return -1;
}

noinline int kthreadd(void *unused)
{
	for (;;) {
		current->state = TASK_INTERRUPTIBLE;
		schedule();
		barrier();
	}
	return 0;
}

/* arch/powerpc/kernel/entry_64.S: a new kernel thread starts here. */
ASM_ENTRY(ret_from_kernel_thread,
	  "\tmr 3,15\n\tcmpdi 3,0\n\tblt 1f\n\tbl kthread\n\tnop\n\tb 2f\n"
	  "1:\tbl kthreadd\n\tnop\n2:\tb 2b");
