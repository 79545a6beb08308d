/*-------------------------------------------------------------------------
 *
 * http.h
 *		The worker's HTTP layer (http.c, no service in it), the archive
 *		bucket's calls (s3.c), the Skribble client's session (skribble.c)
 *		and Yousign's calls (yousign.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QES_HTTP_H
#define QES_HTTP_H

#include <curl/curl.h>

#include "lib/ilist.h"
#include "nodes/pg_list.h"
#include "utils/array.h"

/*
 * One HTTP call of the worker.  The request lives in the call's memory
 * context; the response buffer is malloc'd, because libcurl's callbacks
 * must not ereport (palloc can).
 */
typedef struct QesCall
{
	dlist_node	node;
	MemoryContext cxt;

	/* what to send */
	int64		item_id;		/* work item, or 0 for a login */
	char	   *kind;			/* create, get, search, remind, put, ... */
	char	   *method;
	char	   *url;
	char	   *body;			/* NULL: none */
	size_t		body_len;
	const char *content_type;
	List	   *headers_in;		/* extra "Name: value" lines from SQL */
	List	   *form;			/* multipart parts "name=value", "name@file" = body */
	const char *service;		/* skribble, yousign or s3: whose rules apply */
	const char *bearer;			/* a static API key; NULL: the session token */
	/* a service's own authentication (S3: SigV4), else the bearer token */
	struct curl_slist *(*sign) (struct QesCall *call, struct curl_slist *h);
	bool		headers_signed; /* every header is signed: none is blanked */
	int			token_gen;		/* login generation of the token sent */
	bool		auth_retried;

	/* what came back */
	CURL	   *easy;
	struct curl_slist *headers;
	curl_mime  *mime;
	CURLcode	result;
	long		status;
	curl_off_t	retry_after;	/* seconds, 0 if none */
	char	   *resp;
	size_t		resp_len;
	size_t		resp_cap;
	bool		resp_too_big;
	char	   *resp_headers;	/* raw header lines, malloc'd */
	size_t		resp_headers_len;
	char		errbuf[CURL_ERROR_SIZE];
} QesCall;

/* http.c */
extern void qes_http_init(void);
extern void qes_http_configure(void);
extern bool qes_http_start(QesCall *call, const char *bearer);
extern void qes_http_perform(QesCall *call);
extern int	qes_http_wait(int timeout_ms, dlist_head *done);
extern void qes_http_release(QesCall *call);
extern void qes_http_shutdown(int code, Datum arg);
extern int	qes_http_in_flight(void);
extern QesCall *qes_call_new(MemoryContext parent, const char *kind,
							 const char *method, const char *url);
extern void qes_call_free(QesCall *call);
extern void qes_call_reset(QesCall *call);
extern const char *qes_call_error(QesCall *call);
extern struct curl_slist *qes_add_header(struct curl_slist *h, const char *fmt,
										 const char *value);
extern void qes_call_set_data(QesCall *call, Datum data);
extern bool qes_call_has_header(QesCall *call, const char *name);
extern void qes_call_add_headers(QesCall *call, ArrayType *lines);
extern bytea *qes_call_body(QesCall *call);
extern void qes_call_add_form(QesCall *call, ArrayType *parts);
extern char *qes_join_url(const char *base, const char *path);

/* yousign.c */
extern bool qes_yousign_ready(void);
extern QesCall *qes_yousign_call(MemoryContext parent, const char *kind,
								 const char *method, const char *path);

/* s3.c */
extern QesCall *qes_s3_call(MemoryContext parent, const char *kind, const char *method,
							const char *bucket, const char *key);

/* skribble.c */
extern bool qes_skribble_have_token(void);
extern const char *qes_skribble_token(int *generation);
extern QesCall *qes_skribble_login_call(MemoryContext parent);
extern bool qes_skribble_take_login(QesCall *call);
extern bool qes_skribble_auth_failed(QesCall *call);
extern void qes_skribble_forget_token(int generation);
extern bool qes_skribble_configured(void);
extern char *qes_json_top_field(const char *json, size_t len, const char *field);

#endif							/* QES_HTTP_H */
