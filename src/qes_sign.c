/*-------------------------------------------------------------------------
 *
 * qes_sign.c
 *		Module entry point: defines the configuration (GUCs), hooks shared
 *		memory and the commit-time wake-up, and the small SQL helpers that
 *		belong to no single concern (clock, acting role).
 *
 *-------------------------------------------------------------------------
 */
#include "qes_sign.h"

#include <limits.h>

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

/* Skribble API */
char	   *qes_database = NULL;
char	   *qes_skribble_url = NULL;
char	   *qes_skribble_username = NULL;
char	   *qes_skribble_api_key = NULL;
int			qes_legislation = 0;

/* providers */
int			qes_provider = 0;
char	   *qes_yousign_url = NULL;
char	   *qes_yousign_api_key = NULL;
char	   *qes_yousign_webhook_secrets = NULL;
int			qes_yousign_poll_budget = 600;

/* callbacks and webhooks */
char	   *qes_callback_base_url = NULL;
char	   *qes_callback_secret = NULL;
char	   *qes_webhook_secrets = NULL;
int			qes_webhook_tolerance = 300;

/* archive */
char	   *qes_s3_endpoint = NULL;
char	   *qes_s3_region = NULL;
char	   *qes_s3_bucket = NULL;
char	   *qes_s3_access_key = NULL;
char	   *qes_s3_secret_key = NULL;
int			qes_s3_object_lock = 0;

/* worker policy */
int			qes_expiry = 30 * 24 * 3600;
char	   *qes_auto_remind = NULL;
int			qes_reconcile_interval = 5 * 60 * 1000;
int			qes_max_concurrency = 16;
int			qes_max_host_connections = 16;
int			qes_http_timeout = 60000;
bool		qes_restore_mode = false;
int			qes_http_connect_timeout = 10000;
int			qes_retry_base_delay = 1000;
int			qes_retry_max_delay = 600000;
int			qes_retry_max_attempts = 50;
int			qes_worker_restart_delay = 5;
int			qes_audit_anchor_interval = 3600;
char	   *qes_ca_file = NULL;

/* session */
char	   *qes_verwaltung = NULL;
char	   *qes_test_clock = NULL;

static const struct config_enum_entry legislation_options[] = {
	{"EIDAS", 0, false},
	{"ZERTES", 1, false},
	{"eidas", 0, true},
	{"zertes", 1, true},
	{NULL, 0, false}
};

static const struct config_enum_entry provider_options[] = {
	{"skribble", 0, false},
	{"yousign", 1, false},
	{NULL, 0, false}
};

static const struct config_enum_entry object_lock_options[] = {
	{"off", 0, false},
	{"governance", 1, false},
	{"compliance", 2, false},
	{NULL, 0, false}
};

#define SECRET_FLAGS (GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE)

static bool check_http_url(char **newval, void **extra, GucSource source);
static void define_string(const char *name, const char *desc, char **var,
						  const char *def, GucContext ctx, int flags,
						  GucStringCheckHook check);
static void define_ms(const char *name, const char *desc, int *var, int def);
static void define_int(const char *name, const char *desc, int *var, int def,
					   int max);

void		_PG_init(void);

/*
 * _PG_init defines the GUCs and installs the shared-memory hooks.  The
 * library works in any backend; shared memory (counters, worker slots)
 * needs shared_preload_libraries.
 */
void
_PG_init(void)
{
	define_string("qes_sign.database",
				  "Databases the qes_sign worker serves, comma-separated.",
				  &qes_database, "", PGC_POSTMASTER, 0, NULL);
	define_string("qes_sign.skribble_url", "Base URL of the Skribble API.",
				  &qes_skribble_url, "https://api.skribble.de/v2", PGC_SIGHUP,
				  0, check_http_url);
	define_string("qes_sign.skribble_username", "Skribble API user name.",
				  &qes_skribble_username, "", PGC_SIGHUP, SECRET_FLAGS, NULL);
	define_string("qes_sign.skribble_api_key", "Skribble API key.",
				  &qes_skribble_api_key, "", PGC_SIGHUP, SECRET_FLAGS, NULL);
	DefineCustomEnumVariable("qes_sign.legislation",
							 "Legislation for QES and AES_MINIMAL requests.",
							 NULL, &qes_legislation, 0, legislation_options,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomEnumVariable("qes_sign.provider",
							 "Trust service of requests created without provider.",
							 NULL, &qes_provider, 0, provider_options,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	define_string("qes_sign.yousign_url", "Base URL of the Yousign API v3.",
				  &qes_yousign_url, "https://api.yousign.app/v3", PGC_SIGHUP,
				  0, check_http_url);
	define_string("qes_sign.yousign_api_key", "Yousign API key.",
				  &qes_yousign_api_key, "", PGC_SIGHUP, SECRET_FLAGS, NULL);
	define_string("qes_sign.yousign_webhook_secrets",
				  "Secrets of the Yousign webhook subscriptions, comma-separated.",
				  &qes_yousign_webhook_secrets, "", PGC_SIGHUP, SECRET_FLAGS, NULL);
	DefineCustomIntVariable("qes_sign.yousign_poll_budget",
							"Yousign calls per hour that reconciliation may spend.",
							"Webhooks make polling rare; Yousign allows 1,200 calls an hour in production, 200 in the sandbox.",
							&qes_yousign_poll_budget, 600, 0, 1000000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	define_string("qes_sign.callback_base_url",
				  "Public base URL of the portal's callback endpoint.",
				  &qes_callback_base_url, "", PGC_SIGHUP, 0, check_http_url);
	define_string("qes_sign.callback_secret",
				  "HMAC key that signs the callback URLs.",
				  &qes_callback_secret, "", PGC_SIGHUP, SECRET_FLAGS, NULL);
	define_string("qes_sign.webhook_secrets",
				  "Standard Webhooks secrets (whsec_...), comma-separated.",
				  &qes_webhook_secrets, "", PGC_SIGHUP, SECRET_FLAGS, NULL);
	DefineCustomIntVariable("qes_sign.webhook_tolerance",
							"Accepted clock skew of webhook timestamps.",
							NULL, &qes_webhook_tolerance, 300, 1, 3600,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	define_string("qes_sign.s3_endpoint", "S3 endpoint URL (path-style).",
				  &qes_s3_endpoint, "", PGC_SIGHUP, 0, NULL);
	define_string("qes_sign.s3_region", "S3 region.",
				  &qes_s3_region, "us-east-1", PGC_SIGHUP, 0, NULL);
	define_string("qes_sign.s3_bucket", "S3 bucket of the archive.",
				  &qes_s3_bucket, "", PGC_SIGHUP, 0, NULL);
	define_string("qes_sign.s3_access_key", "S3 access key.",
				  &qes_s3_access_key, "", PGC_SIGHUP, SECRET_FLAGS, NULL);
	define_string("qes_sign.s3_secret_key", "S3 secret key.",
				  &qes_s3_secret_key, "", PGC_SIGHUP, SECRET_FLAGS, NULL);
	DefineCustomEnumVariable("qes_sign.s3_object_lock",
							 "Object lock mode of archive uploads.",
							 NULL, &qes_s3_object_lock, 0, object_lock_options,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("qes_sign.expiry",
							"Age at which an uncompleted request is withdrawn.",
							NULL, &qes_expiry, 30 * 24 * 3600, 60, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	define_string("qes_sign.auto_remind",
				  "Own reminder schedule: off, or first,every,count "
				  "(e.g. 3d,3d,5).",
				  &qes_auto_remind, "off", PGC_SIGHUP, 0, NULL);
	DefineCustomIntVariable("qes_sign.reconcile_interval",
							"How often open requests are fetched from Skribble.",
							NULL, &qes_reconcile_interval, 5 * 60 * 1000,
							100, INT_MAX, PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	define_int("qes_sign.max_concurrency",
			   "HTTP calls the worker keeps in flight.",
			   &qes_max_concurrency, 16, 1024);
	define_int("qes_sign.max_host_connections",
			   "Connections the worker opens to one host.",
			   &qes_max_host_connections, 16, 1024);
	define_ms("qes_sign.http_connect_timeout", "Connect timeout of API calls.",
			  &qes_http_connect_timeout, 10000);
	define_ms("qes_sign.http_timeout", "Total timeout of one API call.",
			  &qes_http_timeout, 60000);
	define_ms("qes_sign.retry_base_delay",
			  "First delay before an API call is retried (doubles each time).",
			  &qes_retry_base_delay, 1000);
	define_ms("qes_sign.retry_max_delay", "Longest delay between retries.",
			  &qes_retry_max_delay, 600000);
	define_int("qes_sign.retry_max_attempts",
			   "Failures in a row before an API call is given up.",
			   &qes_retry_max_attempts, 50, 1000);
	DefineCustomIntVariable("qes_sign.worker_restart_delay",
							"Seconds before a crashed worker is restarted.",
							NULL, &qes_worker_restart_delay, 5, 1, 3600,
							PGC_POSTMASTER, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("qes_sign.audit_anchor_interval",
							"How often the worker anchors the audit chain in the bucket.",
							"It also anchors after each archived request.",
							&qes_audit_anchor_interval, 3600, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	define_string("qes_sign.ca_file", "Extra CA bundle for TLS.",
				  &qes_ca_file, "", PGC_SIGHUP, 0, NULL);
	define_string("qes_sign.verwaltung",
				  "Tenant of the current session (row-level security).",
				  &qes_verwaltung, "", PGC_USERSET, 0, NULL);
	DefineCustomBoolVariable("qes_sign.restore",
							 "Restore mode: rows of a dump are admitted as they were.",
							 "Set it for pg_restore (PGOPTIONS='-c qes_sign.restore=on'): "
							 "requests keep their status, audit entries their "
							 "number, time, actor and hash.",
							 &qes_restore_mode, false, PGC_SUSET, 0,
							 NULL, NULL, NULL);
	define_string("qes_sign.test_clock",
				  "Overrides qes_sign's clock (tests only).",
				  &qes_test_clock, "", PGC_SUSET, GUC_NOT_IN_SAMPLE, NULL);

	MarkGUCPrefixReserved("qes_sign");
	qes_shmem_init();
	if (process_shared_preload_libraries_in_progress)
		qes_worker_register();
}

/*
 * define_string is DefineCustomStringVariable without the noise.
 */
static void
define_string(const char *name, const char *desc, char **var,
			  const char *def, GucContext ctx, int flags,
			  GucStringCheckHook check)
{
	DefineCustomStringVariable(name, desc, NULL, var, def, ctx, flags,
							   check, NULL, NULL);
}

/*
 * define_ms defines a reloadable duration in milliseconds.
 */
static void
define_ms(const char *name, const char *desc, int *var, int def)
{
	DefineCustomIntVariable(name, desc, NULL, var, def, 1, INT_MAX, PGC_SIGHUP,
							GUC_UNIT_MS, NULL, NULL, NULL);
}

/*
 * define_int defines a reloadable count from 1 to max.
 */
static void
define_int(const char *name, const char *desc, int *var, int def, int max)
{
	DefineCustomIntVariable(name, desc, NULL, var, def, 1, max, PGC_SIGHUP,
							0, NULL, NULL, NULL);
}

/*
 * check_http_url accepts an empty value or an http(s) URL without query or
 * fragment (callback URLs get path segments and a query appended).
 */
static bool
check_http_url(char **newval, void **extra, GucSource source)
{
	const char *v = *newval;

	if (v == NULL || v[0] == '\0')
		return true;
	if (strncmp(v, "http://", 7) != 0 && strncmp(v, "https://", 8) != 0)
	{
		GUC_check_errdetail("The URL must start with http:// or https://.");
		return false;
	}
	if (strpbrk(v, "?# ") != NULL)
	{
		GUC_check_errdetail("The URL must not contain a query, a fragment or spaces.");
		return false;
	}
	return true;
}

/*
 * test_clock returns qes_sign.test_clock, set by a superuser for tests of
 * tolerances and retention, or 0 when it is not set.
 */
static TimestampTz
test_clock(void)
{
	if (qes_test_clock == NULL || qes_test_clock[0] == '\0')
		return 0;
	return DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in,
												   CStringGetDatum(qes_test_clock),
												   ObjectIdGetDatum(InvalidOid),
												   Int32GetDatum(-1)));
}

/*
 * qes_now is qes_sign's wall clock (webhook tolerance): the real time, or
 * the test clock.
 */
TimestampTz
qes_now(void)
{
	TimestampTz t = test_clock();

	return t ? t : GetCurrentTimestamp();
}

/*
 * qes_keep_plan prepares sql once per backend and keeps the plan in *plan;
 * callers are inside SPI_connect.
 */
SPIPlanPtr
qes_keep_plan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes)
{
	if (*plan == NULL)
	{
		/*
		 * Generic: these statements take answers and uploads of up to 40 MB
		 * as parameters, which a custom plan would copy in as constants.
		 */
		SPIPlanPtr	p = SPI_prepare_cursor(sql, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);

		if (p == NULL)
			elog(ERROR, "SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		*plan = p;
	}
	return *plan;
}

PG_FUNCTION_INFO_V1(qes_sign_acting_role);

/*
 * qes_sign_acting_role returns the role on whose behalf the current call
 * runs: the session's role after SET ROLE, not the owner of a SECURITY
 * DEFINER function.  The audit trail records it.
 */
Datum
qes_sign_acting_role(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(GetUserNameFromId(GetOuterUserId(),
													   false)));
}

PG_FUNCTION_INFO_V1(qes_sign_clock);

/*
 * qes_sign_clock is qes_sign.clock(): like now() the start of the
 * transaction (one value per transaction, as STABLE promises), or the test
 * clock.
 */
Datum
qes_sign_clock(PG_FUNCTION_ARGS)
{
	TimestampTz t = test_clock();

	PG_RETURN_TIMESTAMPTZ(t ? t : GetCurrentTransactionStartTimestamp());
}
