/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		Shared state of qes_sign: operator counters and the latches of the
 *		workers, so that an API call can wake them at commit.  Only plain
 *		values live here (proc numbers, never pointers).
 *
 *-------------------------------------------------------------------------
 */
#include "qes_sign.h"

#include "access/xact.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"

#define QES_MAX_WORKERS 32

typedef struct QesWorkerSlot
{
	Oid			dboid;			/* InvalidOid when the slot is free */
	int			procno;			/* index into ProcGlobal->allProcs */
} QesWorkerSlot;

typedef struct QesShared
{
	pg_atomic_uint64 counters[QES_NUM_COUNTERS];
	slock_t		mutex;			/* protects workers[] */
	QesWorkerSlot workers[QES_MAX_WORKERS];
} QesShared;

static QesShared *qes_shared = NULL;
static bool wake_pending = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void qes_shmem_request(void);
static void qes_shmem_startup(void);
static void qes_xact_callback(XactEvent event, void *arg);

static const char *const counter_names[QES_NUM_COUNTERS] = {
	"callbacks_accepted",
	"callbacks_rejected",
	"webhooks_accepted",
	"webhooks_rejected"
};

/*
 * qes_shmem_init hooks shared memory when loaded at postmaster start and
 * registers the commit callback in every process.
 */
void
qes_shmem_init(void)
{
	if (process_shared_preload_libraries_in_progress)
	{
		prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = qes_shmem_request;
		prev_shmem_startup_hook = shmem_startup_hook;
		shmem_startup_hook = qes_shmem_startup;
	}
	RegisterXactCallback(qes_xact_callback, NULL);
}

static void
qes_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(QesShared)));
}

static void
qes_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	qes_shared = ShmemInitStruct("qes_sign", sizeof(QesShared), &found);
	if (!found)
	{
		for (int i = 0; i < QES_NUM_COUNTERS; i++)
			pg_atomic_init_u64(&qes_shared->counters[i], 0);
		SpinLockInit(&qes_shared->mutex);
		memset(qes_shared->workers, 0, sizeof(qes_shared->workers));
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * qes_count bumps an operator counter; without shared memory (library not
 * preloaded) counting is skipped, and the operator view says so.
 */
void
qes_count(QesCounter counter)
{
	if (qes_shared)
		pg_atomic_fetch_add_u64(&qes_shared->counters[counter], 1);
}

/*
 * qes_wake_at_commit asks for the workers to be woken when the current
 * transaction commits (nothing happens if it aborts).
 */
void
qes_wake_at_commit(void)
{
	wake_pending = true;
}

/*
 * qes_wake_workers sets the latch of every registered worker.
 */
void
qes_wake_workers(void)
{
	int			procnos[QES_MAX_WORKERS];
	int			n = 0;

	if (!qes_shared)
		return;
	SpinLockAcquire(&qes_shared->mutex);
	for (int i = 0; i < QES_MAX_WORKERS; i++)
		if (OidIsValid(qes_shared->workers[i].dboid))
			procnos[n++] = qes_shared->workers[i].procno;
	SpinLockRelease(&qes_shared->mutex);

	for (int i = 0; i < n; i++)
		SetLatch(&ProcGlobal->allProcs[procnos[i]].procLatch);
}

static void
qes_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_pending)
				qes_wake_workers();
			wake_pending = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			wake_pending = false;
			break;
		default:
			break;
	}
}

PG_FUNCTION_INFO_V1(qes_sign_wake);
PG_FUNCTION_INFO_V1(qes_sign_wake_at_commit);
PG_FUNCTION_INFO_V1(qes_sign_counters);
PG_FUNCTION_INFO_V1(qes_sign_count);
PG_FUNCTION_INFO_V1(qes_sign_reject);

static QesCounter
counter_by_name(text *name)
{
	char	   *s = text_to_cstring(name);

	for (int i = 0; i < QES_NUM_COUNTERS; i++)
		if (strcmp(counter_names[i], s) == 0)
			return (QesCounter) i;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown qes_sign counter \"%s\"", s)));
	return QES_NUM_COUNTERS;	/* keep compiler quiet */
}

/*
 * qes_sign_count(counter text) bumps a counter from SQL.
 */
Datum
qes_sign_count(PG_FUNCTION_ARGS)
{
	qes_count(counter_by_name(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}

/*
 * qes_sign_reject(counter text, message text) counts a rejection decided in
 * SQL and raises it as 28000, like the C verifiers do.
 */
Datum
qes_sign_reject(PG_FUNCTION_ARGS)
{
	qes_reject(counter_by_name(PG_GETARG_TEXT_PP(0)),
			   errmsg("%s", text_to_cstring(PG_GETARG_TEXT_PP(1))));
	PG_RETURN_VOID();			/* keep compiler quiet */
}

/*
 * qes_sign_wake wakes the workers now.
 */
Datum
qes_sign_wake(PG_FUNCTION_ARGS)
{
	qes_wake_workers();
	PG_RETURN_VOID();
}

/*
 * qes_sign_wake_at_commit wakes the workers when the caller commits.
 */
Datum
qes_sign_wake_at_commit(PG_FUNCTION_ARGS)
{
	qes_wake_at_commit();
	PG_RETURN_VOID();
}

/*
 * qes_sign_counters returns the operator counters as (name, value) rows;
 * value is NULL when the library is not preloaded.
 */
Datum
qes_sign_counters(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < QES_NUM_COUNTERS; i++)
	{
		Datum		values[2];
		bool		nulls[2] = {false, false};

		values[0] = CStringGetTextDatum(counter_names[i]);
		if (qes_shared)
			values[1] = Int64GetDatum((int64)
									  pg_atomic_read_u64(&qes_shared->counters[i]));
		else
			nulls[1] = true;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
