// SPDX-License-Identifier: GPL-2.0-or-later
/* kernel/printk/printk.c and the lockless ring buffer of Linux 5.10+ */
#include "kernel.h"

#define CONFIG_LOG_BUF_SHIFT 14
#define LOG_BUF_LEN (1 << CONFIG_LOG_BUF_SHIFT)
#define PRB_AVGBITS 5
#define DESC_COUNT_BITS (CONFIG_LOG_BUF_SHIFT - PRB_AVGBITS)
#define DESC_COUNT (1 << DESC_COUNT_BITS)
#define DESC_SV_BITS (sizeof(unsigned long) * 8)
#define DESC0_ID(ct_bits) (-((1UL << (ct_bits)) + 1) & ~(3UL << (DESC_SV_BITS - 2)))

static char __log_buf[LOG_BUF_LEN] __aligned(8);
static struct prb_desc _printk_rb_static_descs[DESC_COUNT];
static struct printk_info _printk_rb_static_infos[DESC_COUNT];

/* DEFINE_PRINTKRB(printk_rb_static, ...) */
static struct printk_ringbuffer printk_rb_static = {
	.desc_ring = {
		.count_bits = DESC_COUNT_BITS,
		.descs = _printk_rb_static_descs,
		.infos = _printk_rb_static_infos,
		.head_id = { DESC0_ID(DESC_COUNT_BITS) },
		.tail_id = { DESC0_ID(DESC_COUNT_BITS) },
	},
	.text_data_ring = {
		.size_bits = CONFIG_LOG_BUF_SHIFT,
		.data = __log_buf,
		.head_lpos = { -LOG_BUF_LEN },
		.tail_lpos = { -LOG_BUF_LEN },
	},
};

struct printk_ringbuffer *prb = &printk_rb_static;
const enum desc_state __used desc_state_initial = desc_reusable;
const enum printk_info_flags __used printk_flags_default = LOG_NEWLINE | LOG_CONT;
int console_loglevel = 7;

noinline int vsnprintf(char *buf, size_t size, const char *fmt, va_list args)
{
	size_t n = 0;

	while (fmt[n] && n + 1 < size) {
		buf[n] = fmt[n];
		n++;
	}
	if (size)
		buf[n] = 0;
	return n;
}

noinline static int prb_reserve_and_store(const char *text, int len)
{
	struct prb_desc_ring *ring = &prb->desc_ring;
	long id = ring->head_id.counter + 1;
	struct prb_desc *d = &ring->descs[id & (DESC_COUNT - 1)];

	d->state_var.counter = id | (2UL << (DESC_SV_BITS - 2));
	ring->infos[id & (DESC_COUNT - 1)].text_len = len;
	ring->head_id.counter = id;
	return len;
}

noinline int vprintk_emit(int facility, int level, const char *fmt, va_list args)
{
	static char textbuf[1024];
	int len = vsnprintf(textbuf, sizeof(textbuf), fmt, args);

	return prb_reserve_and_store(textbuf, len);
}

noinline int printk(const char *fmt, ...)
{
	va_list args;
	int r;

	va_start(args, fmt);
	r = vprintk_emit(0, -1, fmt, args);
	va_end(args);
	return r;
}

noinline void show_regs(struct pt_regs *regs)
{
	printk("NIP:  %016lx LR: %016lx CTR: %016lx\n", regs->nip, regs->link, regs->ctr);
}

noinline void show_stack(struct task_struct *tsk, unsigned long *sp)
{
	printk("Call Trace:\n");
	printk("[%p] [%p] %pS\n", sp, sp, sp);
}

noinline void dump_stack(void)
{
	printk("CPU: %d PID: %d Comm: %s\n", raw_smp_processor_id(), current->pid, current->comm);
	show_stack(current, NULL);
}
