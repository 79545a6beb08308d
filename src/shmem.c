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

#include <time.h>

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
	int			in_flight;		/* the worker's HTTP calls in flight */
} QesWorkerSlot;

/* API calls and retries of the last minute, in one-second buckets */
#define QES_RATE_SLOTS 60

typedef struct QesRate
{
	int64		second;			/* the Unix second a slot counts */
	uint64		calls;
	uint64		retries;
} QesRate;

typedef struct QesShared
{
	pg_atomic_uint64 counters[QES_NUM_COUNTERS];
	slock_t		mutex;			/* protects workers[] and rate[] */
	QesWorkerSlot workers[QES_MAX_WORKERS];
	QesRate		rate[QES_RATE_SLOTS];
} QesShared;

static QesShared *qes_shared = NULL;
static bool wake_pending = false;
static int	my_slot = -1;		/* this worker's slot, or -1 */

static void detach_slot(int code, Datum arg);

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void qes_shmem_request(void);
static void qes_shmem_startup(void);
static void qes_xact_callback(XactEvent event, void *arg);

static const char *const counter_names[QES_NUM_COUNTERS] = {
	"callbacks_accepted",
	"callbacks_rejected",
	"webhooks_accepted",
	"webhooks_rejected",
	"api_calls",
	"api_retries",
	"api_failures",
	"logins",
	"login_failures"
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
		memset(qes_shared->rate, 0, sizeof(qes_shared->rate));
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
	if (!qes_shared)
		return;
	pg_atomic_fetch_add_u64(&qes_shared->counters[counter], 1);
	if (counter == QES_API_CALLS || counter == QES_API_RETRIES)
	{
		int64		sec = (int64) time(NULL);
		QesRate    *r = &qes_shared->rate[sec % QES_RATE_SLOTS];

		SpinLockAcquire(&qes_shared->mutex);
		if (r->second != sec)
		{
			r->second = sec;
			r->calls = r->retries = 0;
		}
		if (counter == QES_API_CALLS)
			r->calls++;
		else
			r->retries++;
		SpinLockRelease(&qes_shared->mutex);
	}
}

/*
 * last_minute sums the calls (or retries) of the last 60 seconds.
 */
static uint64
last_minute(bool retries)
{
	int64		now = (int64) time(NULL);
	uint64		sum = 0;

	SpinLockAcquire(&qes_shared->mutex);
	for (int i = 0; i < QES_RATE_SLOTS; i++)
		if (qes_shared->rate[i].second > now - QES_RATE_SLOTS)
			sum += retries ? qes_shared->rate[i].retries : qes_shared->rate[i].calls;
	SpinLockRelease(&qes_shared->mutex);
	return sum;
}

/*
 * qes_set_in_flight publishes the worker's calls in flight.
 */
void
qes_set_in_flight(int n)
{
	if (!qes_shared || my_slot < 0)
		return;
	SpinLockAcquire(&qes_shared->mutex);
	qes_shared->workers[my_slot].in_flight = n;
	SpinLockRelease(&qes_shared->mutex);
}

/*
 * qes_worker_attach_slot registers the calling worker, so that commits can
 * set its latch; the slot is freed when the process exits.
 */
void
qes_worker_attach_slot(void)
{
	if (!qes_shared)
		return;
	SpinLockAcquire(&qes_shared->mutex);
	for (int i = 0; i < QES_MAX_WORKERS && my_slot < 0; i++)
		if (!OidIsValid(qes_shared->workers[i].dboid))
		{
			qes_shared->workers[i].dboid = MyDatabaseId;
			qes_shared->workers[i].procno = MyProc->pgprocno;
			qes_shared->workers[i].in_flight = 0;
			my_slot = i;
		}
	SpinLockRelease(&qes_shared->mutex);
	if (my_slot < 0)
		ereport(FATAL,
				(errmsg("too many qes_sign workers"),
				 errdetail("At most %d databases can be served.", QES_MAX_WORKERS)));
	before_shmem_exit(detach_slot, (Datum) 0);
}

static void
detach_slot(int code, Datum arg)
{
	SpinLockAcquire(&qes_shared->mutex);
	qes_shared->workers[my_slot].dboid = InvalidOid;
	qes_shared->workers[my_slot].in_flight = 0;
	SpinLockRelease(&qes_shared->mutex);
	my_slot = -1;
}

/*
 * calls_in_flight sums the published in-flight counts of all workers.
 */
static uint64
calls_in_flight(void)
{
	uint64		n = 0;

	SpinLockAcquire(&qes_shared->mutex);
	for (int i = 0; i < QES_MAX_WORKERS; i++)
		if (OidIsValid(qes_shared->workers[i].dboid))
			n += qes_shared->workers[i].in_flight;
	SpinLockRelease(&qes_shared->mutex);
	return n;
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
 * counter_arg is the counter name in the first argument, which must not be
 * NULL (these functions are not STRICT: a rejection must never be skipped).
 */
static text *
counter_arg(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("qes_sign counter name must not be null")));
	return PG_GETARG_TEXT_PP(0);
}

/*
 * qes_sign_count(counter text) bumps a counter from SQL.
 */
Datum
qes_sign_count(PG_FUNCTION_ARGS)
{
	qes_count(counter_by_name(counter_arg(fcinfo)));
	PG_RETURN_VOID();
}

/*
 * qes_sign_reject(counter text, message text) counts a rejection decided in
 * SQL and raises it as 28000, like the C verifiers do.
 */
Datum
qes_sign_reject(PG_FUNCTION_ARGS)
{
	qes_reject(counter_by_name(counter_arg(fcinfo)),
			   errmsg("%s", PG_ARGISNULL(1) ? "rejected" : text_to_cstring(PG_GETARG_TEXT_PP(1))));
	PG_RETURN_VOID();			/* keep compiler quiet */
}

/*
 * qes_sign_wake wakes the workers now, and again when the caller commits:
 * work queued in the same transaction is visible to them only then.
 */
Datum
qes_sign_wake(PG_FUNCTION_ARGS)
{
	qes_wake_workers();
	qes_wake_at_commit();
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
 * put_counter adds one (name, value) row; value is NULL without shared
 * memory.
 */
static void
put_counter(ReturnSetInfo *rsinfo, const char *name, uint64 value)
{
	Datum		values[2];
	bool		nulls[2] = {false, qes_shared == NULL};

	values[0] = CStringGetTextDatum(name);
	values[1] = Int64GetDatum((int64) value);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
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
		put_counter(rsinfo, counter_names[i], qes_shared ?
					pg_atomic_read_u64(&qes_shared->counters[i]) : 0);
	put_counter(rsinfo, "calls_in_flight", qes_shared ? calls_in_flight() : 0);
	put_counter(rsinfo, "api_calls_last_minute", qes_shared ? last_minute(false) : 0);
	put_counter(rsinfo, "api_retries_last_minute", qes_shared ? last_minute(true) : 0);
	return (Datum) 0;
}
