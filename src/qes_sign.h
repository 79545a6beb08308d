/*-------------------------------------------------------------------------
 *
 * qes_sign.h
 *		Prelude for every qes_sign source file: PostgreSQL headers in one
 *		place, the GUC variables, and the helpers shared between concerns.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QES_SIGN_H
#define QES_SIGN_H

#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#define QES_SHA256_LEN 32
/* the extension version (default_version) this library speaks */
#define QES_SCHEMA_VERSION "1.1"
/* callbacks and webhooks: larger bodies are refused (Skribble sends < 1 KB) */
#define QES_MAX_CALLBACK_BODY 65536

/* GUC variables (qes_sign.c) */
extern char *qes_database;
extern char *qes_skribble_url;
extern char *qes_skribble_username;
extern char *qes_skribble_api_key;
extern char *qes_yousign_url;
extern char *qes_yousign_api_key;
extern char *qes_yousign_webhook_secrets;
extern char *qes_ca_file;
extern int	qes_max_concurrency;
extern int	qes_max_host_connections;
extern int	qes_http_timeout;
extern int	qes_http_connect_timeout;
extern int	qes_worker_restart_delay;
extern char *qes_s3_endpoint;
extern char *qes_s3_region;
extern char *qes_s3_bucket;
extern char *qes_s3_access_key;
extern char *qes_s3_secret_key;
extern char *qes_callback_base_url;
extern char *qes_callback_secret;
extern char *qes_webhook_secrets;
extern char *qes_test_clock;
extern int	qes_webhook_tolerance;
extern bool qes_restore_mode;

/* crypto.c: thin wrappers over OpenSSL */
extern void qes_sha256(const void *data, size_t len, unsigned char *out);
extern void qes_md5(const void *data, size_t len, unsigned char *out);
extern void qes_hmac_sha256(const void *key, size_t keylen,
							const void *data, size_t len, unsigned char *out);
extern bool qes_equal_ct(const void *a, const void *b, size_t len);
extern char *qes_base64(const unsigned char *data, int len, bool url);
extern int	qes_base64_decode(const char *in, int inlen, unsigned char *out,
							  int outcap);

/* qes_sign.c */
extern TimestampTz qes_now(void);
struct _SPI_plan;
extern struct _SPI_plan *qes_keep_plan(struct _SPI_plan **plan, const char *sql,
									   int nargs, Oid *argtypes);

/* shmem.c */
typedef enum QesCounter
{
	QES_CALLBACKS_ACCEPTED,
	QES_CALLBACKS_REJECTED,
	QES_WEBHOOKS_ACCEPTED,
	QES_WEBHOOKS_REJECTED,
	QES_API_CALLS,
	QES_API_RETRIES,
	QES_API_FAILURES,
	QES_LOGINS,
	QES_LOGIN_FAILURES,
	QES_NUM_COUNTERS
} QesCounter;

extern void qes_shmem_init(void);
extern void qes_count(QesCounter counter);
extern void qes_set_in_flight(int n);
extern void qes_worker_attach_slot(void);

/* worker.c */
extern void qes_worker_register(void);
extern void qes_wake_at_commit(void);
extern void qes_wake_workers(void);

/* Rejecting a callback or webhook: count it, then raise 28000. */
#define qes_reject(counter, ...) \
	do { \
		qes_count(counter); \
		ereport(ERROR, \
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION), \
				 __VA_ARGS__)); \
	} while (0)

#endif							/* QES_SIGN_H */
