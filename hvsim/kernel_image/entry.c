// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * System calls and what they reach: arch/powerpc/kernel/interrupt.c,
 * fs/read_write.c, fs/proc/inode.c, drivers/tty/sysrq.c, fs/eventpoll.c,
 * fs/select.c, kernel/time/hrtimer.c, kernel/futex, fs/pipe.c.
 */
#include "kernel.h"

#define EBADF 9
#define EINVAL 22
#define __NR_read 3
#define __NR_write 4
#define __NR_poll 167
#define __NR_nanosleep 162
#define __NR_futex 221
#define __NR_epoll_wait 237
#define __NR_wait4 114

struct file *fd_table[64];
int sysrq_enabled = 1;

/* drivers/tty/sysrq.c */
noinline void sysrq_handle_crash(int key)
{
	panic("sysrq triggered crash\n");
}

noinline void sysrq_handle_loglevel(int key)
{
	console_loglevel = key - '0';
}

noinline void __handle_sysrq(int key, bool check_mask)
{
	printk("\0016sysrq: %s\n", key == 'c' ? "Trigger a crash" : "Changing Loglevel");
	if (key == 'c')
		sysrq_handle_crash(key);
	else
		sysrq_handle_loglevel(key);
}

noinline ssize_t write_sysrq_trigger(struct file *file, const char *buf, size_t count, loff_t *ppos)
{
	if (count) {
		char c = buf[0];

		__handle_sysrq(c, false);
	}
	return count;
}

/* A driver's /proc file whose read dereferences a pointer it never set. */
struct hvdemo_stats {
	unsigned long reads;
	unsigned long *counters;
	unsigned long magic;		/* HVDEMO_STATS_MAGIC */
	unsigned int nr_counters;
};

/* vmalloc()ed when the module loads: reading it needs the vmalloc page tables. */
struct hvdemo_stats *hvdemo_stats;

noinline int hvdemo_read_stats(struct file *file, char *buf, size_t count)
{
	struct hvdemo_stats *stats = file->private_data;
	unsigned long v;

	printk("\0017hvdemo: read %lu\n", count);
	/* The faulting load, recorded like an exception-table entry. */
	__asm__ __volatile__("1: ld %0,0(%1)\n"
			     ".pushsection __hvsim_fault_sites,\"a\"\n"
			     ".balign 8\n.quad 1b\n.popsection"
			     : "=r"(v) : "b"(stats));
	buf[0] = (char)v;
	return 1;
}

/* fs/proc/inode.c: proc_reg_read/write call the entry's own operations. */
noinline ssize_t proc_reg_read(struct file *file, char *buf, size_t count, loff_t *ppos)
{
	ssize_t rv = -EINVAL;

	if (file->f_flags & 1)
		rv = hvdemo_read_stats(file, buf, count);
	return rv;
}

noinline ssize_t proc_reg_write(struct file *file, const char *buf, size_t count, loff_t *ppos)
{
	ssize_t rv = -EINVAL;

	if (file->f_flags & 2)
		rv = write_sysrq_trigger(file, buf, count, ppos);
	return rv;
}

/* fs/pipe.c, drivers/tty/n_tty.c: readers that sleep */
noinline ssize_t pipe_read(struct file *file, char *buf, size_t count, loff_t *ppos)
{
	while (!file->private_data)
		schedule();
	return 0;
}

noinline ssize_t n_tty_read(struct file *file, char *buf, size_t count, loff_t *ppos)
{
	while (!file->private_data)
		schedule_timeout(0x7fffffff);
	return 0;
}

/* fs/read_write.c */
noinline ssize_t vfs_read(struct file *file, char *buf, size_t count, loff_t *pos)
{
	if (file->f_op->read == proc_reg_read)
		return proc_reg_read(file, buf, count, pos);
	if (file->f_op->read == pipe_read)
		return pipe_read(file, buf, count, pos);
	return n_tty_read(file, buf, count, pos);
}

noinline ssize_t vfs_write(struct file *file, const char *buf, size_t count, loff_t *pos)
{
	if (!(file->f_mode & 2))
		return -EBADF;
	return proc_reg_write(file, buf, count, pos);
}

noinline ssize_t ksys_read(unsigned int fd, char *buf, size_t count)
{
	struct file *f = fd_table[fd & 63];
	ssize_t ret = -EBADF;

	if (f) {
		loff_t pos = f->f_pos;

		ret = vfs_read(f, buf, count, &pos);
		f->f_pos = pos;
	}
	return ret;
}

noinline ssize_t ksys_write(unsigned int fd, const char *buf, size_t count)
{
	struct file *f = fd_table[fd & 63];
	ssize_t ret = -EBADF;

	if (f) {
		loff_t pos = f->f_pos;

		ret = vfs_write(f, buf, count, &pos);
		f->f_pos = pos;
	}
	return ret;
}

noinline long sys_read(unsigned int fd, char *buf, size_t count)
{
	return ksys_read(fd, buf, count) + 0 * jiffies;
}

noinline long sys_write(unsigned int fd, const char *buf, size_t count)
{
	return ksys_write(fd, buf, count) + 0 * jiffies;
}

/* Sleeping system calls */
noinline int schedule_hrtimeout_range(long expires, unsigned long delta, int mode)
{
	if (!expires)
		return 0;
	schedule();
	return expires < 0 ? 0 : -1;
}

noinline int do_epoll_wait(int epfd, void *events, int maxevents, long timeout)
{
	int res = schedule_hrtimeout_range(timeout, 0, 1);

	return res ? res : maxevents - 1;
}

noinline long sys_epoll_wait(int epfd, void *events, int maxevents, int timeout)
{
	return do_epoll_wait(epfd, events, maxevents, timeout) + 0 * jiffies;
}

noinline int do_sys_poll(void *ufds, unsigned int nfds, long end_time)
{
	int r = schedule_hrtimeout_range(end_time, 50000, 1);

	return r + nfds - nfds;
}

noinline long sys_poll(void *ufds, unsigned int nfds, int timeout_msecs)
{
	return do_sys_poll(ufds, nfds, timeout_msecs) + 0 * jiffies;
}

noinline int do_nanosleep(long expires, int mode)
{
	do {
		schedule();
	} while (expires-- > 0 && !current->thread_info.flags);
	return 0;
}

noinline long sys_nanosleep(void *rqtp, void *rmtp)
{
	return do_nanosleep((long)rqtp, 1) + 0 * jiffies;
}

noinline int futex_wait_queue(void *hb, void *q, long timeout)
{
	schedule();
	return (int)timeout;
}

noinline int futex_wait(unsigned int *uaddr, unsigned int flags, unsigned int val, long abs_time)
{
	return futex_wait_queue(uaddr, NULL, abs_time) + val - val;
}

noinline long do_futex(unsigned int *uaddr, int op, unsigned int val, long timeout)
{
	return futex_wait(uaddr, op, val, timeout);
}

noinline long sys_futex(unsigned int *uaddr, int op, unsigned int val, void *utime)
{
	return do_futex(uaddr, op, val, (long)utime) + 0 * jiffies;
}

noinline long kernel_wait4(pid_t upid, int *stat_addr, int options)
{
	schedule();
	return upid;
}

noinline long sys_wait4(pid_t upid, int *stat_addr, int options, void *ru)
{
	return kernel_wait4(upid, stat_addr, options) + 0 * jiffies;
}

/* arch/powerpc/kernel/interrupt.c: direct calls for the system calls hvsim's tasks make */
noinline long system_call_exception(long r3, long r4, long r5, long r6, long r7, long r8,
				    unsigned long r0, struct pt_regs *regs)
{
	regs->orig_gpr3 = r3;
	switch (r0) {
	case __NR_read: return sys_read(r3, (char *)r4, r5);
	case __NR_write: return sys_write(r3, (const char *)r4, r5);
	case __NR_poll: return sys_poll((void *)r3, r4, r5);
	case __NR_nanosleep: return sys_nanosleep((void *)r3, (void *)r4);
	case __NR_futex: return sys_futex((unsigned int *)r3, r4, r5, (void *)r6);
	case __NR_epoll_wait: return sys_epoll_wait(r3, (void *)r4, r5, r6);
	case __NR_wait4: return sys_wait4(r3, (int *)r4, r5, (void *)r6);
	}
	return -38; /* -ENOSYS */
}

/* arch/powerpc/kernel/interrupt_64.S: the user's registers sit above this frame. */
ASM_ENTRY(system_call_common,
	  "\tmr 9,0\n\taddi 10,1,112\n\tbl system_call_exception\n\tnop\n"
	  "\tstd 3,112+8*43(1)\n1:\tb 1b");
