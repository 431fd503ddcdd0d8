/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * hvsim's kernel image: the data structures a crash-analysis tool reads first,
 * laid out as Linux lays them out (field names and order from the kernel
 * sources named beside each one), and just enough code to give the panic
 * paths and sleeping tasks real call frames. Nothing here runs: hvsim lays
 * the built image into a simulated LPAR's memory and fills in the state of
 * the kernel at its crash (tasks, stacks, log, registers).
 */
#ifndef HVSIM_KERNEL_H
#define HVSIM_KERNEL_H

#define NR_CPUS 1024
#define TASK_COMM_LEN 16
#define THREAD_SIZE (16 * 1024)
#define PAGE_SIZE 65536
#define __NEW_UTS_LEN 64

#define __percpu
#define __section(s) __attribute__((__section__(s)))
#define __aligned(x) __attribute__((__aligned__(x)))
#define __init __section(".init.text")
#define __used __attribute__((__used__))
#define noinline __attribute__((__noinline__))
#define __noreturn __attribute__((__noreturn__))
#define __cacheline_aligned __aligned(128)
#define DEFINE_PER_CPU(type, name) __section(".data..percpu") __typeof__(type) name
#define DEFINE_PER_CPU_SHARED_ALIGNED(type, name) \
	__section(".data..percpu") __cacheline_aligned __typeof__(type) name
#define NULL ((void *)0)
#define barrier() __asm__ __volatile__("" ::: "memory")
/*
 * Assembly entry points (the outermost frame of every kernel stack), as in
 * arch/powerpc/kernel/entry_64.S and head_64.S: no CFI and no debug info, a
 * zero back chain ends the stack. ASM_ENTRY(name, body) defines a function
 * symbol in .text whose body calls C.
 */
#define ASM_ENTRY(name, body)                                                  \
	__asm__(".text\n\t.balign 512\n\t.globl " #name "\n\t.type " #name       \
		",@function\n" #name ":\n" body "\n\t.size " #name ",.-" #name "\n")

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef signed char s8;
typedef short s16;
typedef int s32;
typedef long long s64;
typedef _Bool bool;
#define true 1
#define false 0
typedef int pid_t;
typedef unsigned long size_t;
typedef long ssize_t;
typedef long long loff_t;
typedef __builtin_va_list va_list;
#define va_start(v, l) __builtin_va_start(v, l)
#define va_end(v) __builtin_va_end(v)

/* include/linux/types.h, include/linux/refcount.h, include/linux/kref.h */
typedef struct { int counter; } atomic_t;
typedef struct { s64 counter; } atomic64_t;
typedef atomic64_t atomic_long_t;
typedef struct refcount_struct { atomic_t refs; } refcount_t;
struct kref { refcount_t refcount; };
struct list_head { struct list_head *next, *prev; };
struct hlist_head { struct hlist_node *first; };
struct hlist_node { struct hlist_node *next, **pprev; };
struct callback_head {
	struct callback_head *next;
	void (*func)(struct callback_head *head);
};
#define rcu_head callback_head

/* include/linux/spinlock_types.h (no lockdep) */
typedef struct { volatile unsigned int slock; } arch_spinlock_t;
typedef struct raw_spinlock { arch_spinlock_t raw_lock; } raw_spinlock_t;
typedef struct spinlock { union { struct raw_spinlock rlock; }; } spinlock_t;

/* include/linux/cpumask.h */
struct cpumask { unsigned long bits[NR_CPUS / 64]; };
typedef struct cpumask cpumask_t;

/* include/linux/utsname.h, include/uapi/linux/utsname.h */
struct new_utsname {
	char sysname[__NEW_UTS_LEN + 1];
	char nodename[__NEW_UTS_LEN + 1];
	char release[__NEW_UTS_LEN + 1];
	char version[__NEW_UTS_LEN + 1];
	char machine[__NEW_UTS_LEN + 1];
	char domainname[__NEW_UTS_LEN + 1];
};
struct user_namespace;
struct uts_namespace {
	struct kref kref;
	struct new_utsname name;
	struct user_namespace *user_ns;
};

/* arch/powerpc/include/asm/ptrace.h (64-bit, as in 2.6.32) */
struct pt_regs {
	unsigned long gpr[32];
	unsigned long nip;
	unsigned long msr;
	unsigned long orig_gpr3;
	unsigned long ctr;
	unsigned long link;
	unsigned long xer;
	unsigned long ccr;
	unsigned long softe;
	unsigned long trap;
	unsigned long dar;
	unsigned long dsisr;
	unsigned long result;
};
#define STACK_FRAME_OVERHEAD 112
#define INT_FRAME_SIZE (sizeof(struct pt_regs) + STACK_FRAME_OVERHEAD + 288)

/* arch/powerpc/include/asm/processor.h, thread_info.h */
struct thread_struct {
	unsigned long ksp;
	unsigned long ksp_vsid;
	struct pt_regs *regs;
	unsigned long fs;
	unsigned long dabr;
};
struct thread_info {
	int preempt_count;
	unsigned long local_flags;
	unsigned long flags;
};
union thread_union {
	struct task_struct *task;
	unsigned long stack[THREAD_SIZE / sizeof(long)];
};

/* include/linux/pid.h, include/linux/pid_namespace.h (2.6.32: pid_hash) */
enum pid_type { PIDTYPE_PID, PIDTYPE_PGID, PIDTYPE_SID, PIDTYPE_MAX };
struct pid_namespace;
struct upid {
	int nr;
	struct pid_namespace *ns;
	struct hlist_node pid_chain;
};
struct pid {
	atomic_t count;
	unsigned int level;
	struct hlist_head tasks[PIDTYPE_MAX];
	struct rcu_head rcu;
	struct upid numbers[1];
};
struct pid_link {
	struct hlist_node node;
	struct pid *pid;
};
struct pidmap { atomic_t nr_free; void *page; };
#define PIDMAP_ENTRIES 1
struct kmem_cache;
struct pid_namespace {
	struct kref kref;
	struct pidmap pidmap[PIDMAP_ENTRIES];
	int last_pid;
	struct task_struct *child_reaper;
	struct kmem_cache *pid_cachep;
	unsigned int level;
	struct pid_namespace *parent;
};

/* include/linux/mm_types.h (the head of it) */
typedef struct { unsigned long pgd; } pgd_t;
struct mm_struct {
	unsigned long mmap_base;
	unsigned long task_size;
	pgd_t *pgd;
	atomic_t mm_users;
	atomic_t mm_count;
	int map_count;
	unsigned long total_vm;
	unsigned long start_code, end_code, start_data, end_data;
	unsigned long start_brk, brk, start_stack;
	unsigned long arg_start, arg_end, env_start, env_end;
	struct task_struct *owner;
};

/* include/linux/sched/signal.h */
struct signal_struct {
	refcount_t sigcnt;
	atomic_t live;
	int nr_threads;
	struct list_head thread_head;
	int group_exit_code;
	int notify_count;
	struct task_struct *group_exec_task;
	int leader;
};

/* include/linux/sched.h */
#define TASK_RUNNING 0x0000
#define TASK_INTERRUPTIBLE 0x0001
#define TASK_UNINTERRUPTIBLE 0x0002
#define PF_IDLE 0x00000002
#define PF_KTHREAD 0x00200000
struct task_struct {
	struct thread_info thread_info;
	volatile long state;
	void *stack;
	refcount_t usage;
	unsigned int flags;
	unsigned int ptrace;
	int on_cpu;
	unsigned int cpu;
	int on_rq;
	int prio;
	int static_prio;
	int normal_prio;
	unsigned int rt_priority;
	unsigned int policy;
	struct list_head tasks;
	struct mm_struct *mm;
	struct mm_struct *active_mm;
	int exit_state;
	int exit_code;
	int exit_signal;
	pid_t pid;
	pid_t tgid;
	struct task_struct *real_parent;
	struct task_struct *parent;
	struct list_head children;
	struct list_head sibling;
	struct task_struct *group_leader;
	struct pid_link pids[PIDTYPE_MAX];
	struct list_head thread_group;
	struct list_head thread_node;
	u64 utime;
	u64 stime;
	unsigned long nvcsw;
	unsigned long nivcsw;
	u64 start_time;
	u64 last_switch_time;
	char comm[TASK_COMM_LEN];
	struct signal_struct *signal;
	struct thread_struct thread;
};

/* kernel/sched/sched.h (the members drgn and crash read) */
struct rq {
	raw_spinlock_t lock;
	unsigned int nr_running;
	u64 nr_switches;
	unsigned int nr_uninterruptible;
	struct task_struct *curr;
	struct task_struct *idle;
	struct task_struct *stop;
	unsigned long next_balance;
	struct mm_struct *prev_mm;
	u64 clock;
	u64 clock_task;
	int cpu;
	int online;
};

/* arch/powerpc/include/asm/paca.h (the head of it) */
struct paca_struct {
	u16 lock_token;
	u16 __pad[3];
	u16 paca_index;
	u64 kernel_toc;
	u64 kernelbase;
	u64 kernel_msr;
	void *emergency_sp;
	u64 saved_r1;
	u64 saved_msr;
	u8 hw_cpu_id;
	u8 cpu_start;
	u8 kexec_state;
	struct task_struct *__current;
	u64 kstack;
	u64 stab_rr;
	u64 exgen[13];
} __aligned(0x400);

/* kernel/printk/printk_ringbuffer.h, include/linux/dev_printk.h (v5.10+) */
#define PRINTK_INFO_SUBSYSTEM_LEN 16
#define PRINTK_INFO_DEVICE_LEN 48
struct dev_printk_info {
	char subsystem[PRINTK_INFO_SUBSYSTEM_LEN];
	char device[PRINTK_INFO_DEVICE_LEN];
};
struct printk_info {
	u64 seq;
	u64 ts_nsec;
	u16 text_len;
	u8 facility;
	u8 flags : 5;
	u8 level : 3;
	u32 caller_id;
	struct dev_printk_info dev_info;
};
struct prb_data_blk_lpos {
	unsigned long begin;
	unsigned long next;
};
struct prb_desc {
	atomic_long_t state_var;
	struct prb_data_blk_lpos text_blk_lpos;
};
struct prb_data_ring {
	unsigned int size_bits;
	char *data;
	atomic_long_t head_lpos;
	atomic_long_t tail_lpos;
};
struct prb_desc_ring {
	unsigned int count_bits;
	struct prb_desc *descs;
	struct printk_info *infos;
	atomic_long_t head_id;
	atomic_long_t tail_id;
	atomic_long_t last_finalized_seq;
};
struct printk_ringbuffer {
	struct prb_desc_ring desc_ring;
	struct prb_data_ring text_data_ring;
	atomic_long_t fail;
};
enum desc_state {
	desc_miss = -1,
	desc_reserved = 0x0,
	desc_committed = 0x1,
	desc_finalized = 0x2,
	desc_reusable = 0x3,
};
enum printk_info_flags {
	LOG_NEWLINE = 2,
	LOG_CONT = 8,
};

/* include/linux/crash_core.h, include/linux/elf.h */
struct elf_note { u32 n_namesz; u32 n_descsz; u32 n_type; };
#define ALIGN4(x) (((x) + 3) & ~3)
#define ELF_PRSTATUS_SIZE 504 /* struct elf_prstatus on ppc64 */
#define CRASH_CORE_NOTE_NAME_BYTES ALIGN4(sizeof("CORE"))
#define CRASH_CORE_NOTE_HEAD_BYTES ALIGN4(sizeof(struct elf_note))
#define CRASH_CORE_NOTE_DESC_BYTES ALIGN4(ELF_PRSTATUS_SIZE)
#define CRASH_CORE_NOTE_BYTES                                                  \
	((CRASH_CORE_NOTE_HEAD_BYTES * 2) + CRASH_CORE_NOTE_NAME_BYTES +      \
	 CRASH_CORE_NOTE_DESC_BYTES)
typedef u32 note_buf_t[CRASH_CORE_NOTE_BYTES / 4];
#define VMCOREINFO_BYTES 4096
#define VMCOREINFO_NOTE_NAME "VMCOREINFO"
#define VMCOREINFO_NOTE_NAME_BYTES ALIGN4(sizeof(VMCOREINFO_NOTE_NAME))
#define VMCOREINFO_NOTE_SIZE                                                   \
	((CRASH_CORE_NOTE_HEAD_BYTES * 2) + VMCOREINFO_NOTE_NAME_BYTES +      \
	 VMCOREINFO_BYTES)

/* fs: the head of struct file and file_operations */
struct file;
struct file_operations {
	ssize_t (*read)(struct file *, char *, size_t, loff_t *);
	ssize_t (*write)(struct file *, const char *, size_t, loff_t *);
	long (*unlocked_ioctl)(struct file *, unsigned int, unsigned long);
	int (*open)(void *, struct file *);
};
struct file {
	const struct file_operations *f_op;
	unsigned int f_flags;
	unsigned int f_mode;
	loff_t f_pos;
	void *private_data;
};

/* Shared declarations (one definition each, in the .c files). */
extern struct task_struct init_task;
extern struct paca_struct paca[NR_CPUS];
extern unsigned long __per_cpu_offset[NR_CPUS];
/* arch/powerpc/include/asm/irq.h (2.6.32, CONFIG_IRQSTACKS) */
extern struct thread_info *hardirq_ctx[NR_CPUS];
extern struct thread_info *softirq_ctx[NR_CPUS];
extern struct rq runqueues;
extern atomic_t panic_cpu;
extern struct pid_namespace init_pid_ns;
extern struct mm_struct init_mm;
extern unsigned long volatile jiffies;
extern unsigned int nr_cpu_ids;
extern int console_loglevel;
void show_regs(struct pt_regs *regs);

int printk(const char *fmt, ...);
int vsnprintf(char *buf, size_t size, const char *fmt, va_list args);
void __noreturn panic(const char *fmt, ...);
void dump_stack(void);
void __crash_kexec(struct pt_regs *regs);
void crash_save_cpu(struct pt_regs *regs, int cpu);
void schedule(void);
long schedule_timeout(long timeout);
void io_schedule(void);
int kthread(void *create);
void cpu_startup_entry(int state);
ssize_t proc_reg_write(struct file *file, const char *buf, size_t count, loff_t *ppos);
ssize_t proc_reg_read(struct file *file, char *buf, size_t count, loff_t *ppos);
ssize_t vfs_write(struct file *file, const char *buf, size_t count, loff_t *pos);
ssize_t vfs_read(struct file *file, char *buf, size_t count, loff_t *pos);
long system_call_exception(long r3, long r4, long r5, long r6, long r7, long r8,
			   unsigned long r0, struct pt_regs *regs);
void die(const char *str, struct pt_regs *regs, long err);
int do_page_fault(struct pt_regs *regs, unsigned long address, unsigned long error_code);
void machine_check_exception(struct pt_regs *regs);
int hvdemo_read_stats(struct file *file, char *buf, size_t count);

static inline struct paca_struct *get_paca(void)
{
	register struct paca_struct *local_paca __asm__("r13");
	return local_paca;
}
#define current (get_paca()->__current)
#define raw_smp_processor_id() (get_paca()->paca_index)

#endif /* HVSIM_KERNEL_H */
