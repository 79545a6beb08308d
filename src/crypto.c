/*-------------------------------------------------------------------------
 *
 * crypto.c
 *		The only place qes_sign touches OpenSSL: SHA-256, MD5 (S3's
 *		Content-MD5), HMAC-SHA-256, base64 and constant-time comparison.  Nothing here is hand-rolled.
 *
 *-------------------------------------------------------------------------
 */
#include "qes_sign.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

/*
 * digest writes the digest of data with md to out.
 */
static void
digest(const EVP_MD *md, const char *name, const void *data, size_t len,
	   unsigned char *out)
{
	if (!EVP_Digest(data, len, out, NULL, md, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute %s digest", name)));
}

/*
 * qes_sha256 writes the SHA-256 digest of data to out (32 bytes).
 */
void
qes_sha256(const void *data, size_t len, unsigned char *out)
{
	digest(EVP_sha256(), "SHA-256", data, len, out);
}

/*
 * qes_md5 writes the MD5 digest of data to out (16 bytes): S3's
 * Content-MD5, an integrity check, not a security one.
 */
void
qes_md5(const void *data, size_t len, unsigned char *out)
{
	digest(EVP_md5(), "MD5", data, len, out);
}

/*
 * qes_hmac_sha256 writes HMAC-SHA-256(key, data) to out (32 bytes).
 */
void
qes_hmac_sha256(const void *key, size_t keylen,
				const void *data, size_t len, unsigned char *out)
{
	unsigned int outlen = 0;

	/* OpenSSL rejects a NULL key even when its length is zero */
	if (HMAC(EVP_sha256(), keylen > 0 ? key : "", (int) keylen,
			 data, len, out, &outlen) == NULL || outlen != QES_SHA256_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute HMAC-SHA-256")));
}

/*
 * qes_equal_ct compares two buffers in time independent of their content.
 */
bool
qes_equal_ct(const void *a, const void *b, size_t len)
{
	return CRYPTO_memcmp(a, b, len) == 0;
}

/*
 * qes_base64 encodes data as standard base64, or as unpadded base64url
 * (RFC 4648 section 5) when url is true.  The result is palloc'd.
 */
char *
qes_base64(const unsigned char *data, int len, bool url)
{
	char	   *out = palloc(4 * ((len + 2) / 3) + 1);
	int			n = EVP_EncodeBlock((unsigned char *) out, data, len);

	if (url)
	{
		while (n > 0 && out[n - 1] == '=')
			n--;
		out[n] = '\0';
		for (int i = 0; i < n; i++)
		{
			if (out[i] == '+')
				out[i] = '-';
			else if (out[i] == '/')
				out[i] = '_';
		}
	}
	return out;
}

/*
 * qes_base64_decode decodes standard base64 into out, which holds outcap
 * bytes.  Returns the decoded length, or -1 for invalid input or when the
 * result would not fit.
 */
int
qes_base64_decode(const char *in, int inlen, unsigned char *out, int outcap)
{
	unsigned char *buf;
	int			n;
	int			pad = 0;

	if (inlen <= 0 || inlen % 4 != 0)
		return -1;
	buf = palloc(3 * (inlen / 4) + 1);
	n = EVP_DecodeBlock(buf, (const unsigned char *) in, inlen);
	if (n < 0)
	{
		pfree(buf);
		return -1;
	}
	/* EVP_DecodeBlock counts padding as zero bytes; take them off */
	while (pad < 2 && in[inlen - 1 - pad] == '=')
		pad++;
	n -= pad;
	if (n > outcap)
	{
		pfree(buf);
		return -1;
	}
	memcpy(out, buf, n);
	pfree(buf);
	return n;
}
