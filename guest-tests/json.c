/*
 * json.c: the JSON emitter. Everything is written into the caller's buffer (no malloc); what does
 * not fit sets `overflow` instead.
 */
#include "json.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void j_init(struct json *j, char *buf, size_t cap)
{
	memset(j, 0, sizeof(*j));
	j->buf = buf;
	j->cap = cap;
	buf[0] = '\0';
}

void j_raw(struct json *j, const char *s, size_t n)
{
	if (j->len + n + 1 > j->cap) {
		j->overflow = true;
		return;
	}
	memcpy(j->buf + j->len, s, n);
	j->len += n;
	j->buf[j->len] = '\0';
}

static void j_printf(struct json *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void j_printf(struct json *j, const char *fmt, ...)
{
	char tmp[64];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(tmp)) {
		j->overflow = true;
		return;
	}
	j_raw(j, tmp, (size_t)n);
}

/* Separator before a value: none right after a key, a comma between array/object members. */
static void j_sep(struct json *j)
{
	if (j->after_key) {
		j->after_key = false;
		return;
	}
	if (j->need_comma[j->depth])
		j_raw(j, ",", 1);
	j->need_comma[j->depth] = true;
}

static void j_quoted(struct json *j, const char *s)
{
	j_raw(j, "\"", 1);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\') {
			char esc[2] = {'\\', (char)ch};
			j_raw(j, esc, 2);
		} else if (ch < 0x20 || ch == 0x7f) {
			j_printf(j, "\\u%04x", ch);
		} else if (ch >= 0x80) {
			/* Kernel log text may hold bytes that are not UTF-8; keep the line valid JSON. */
			j_printf(j, "\\u%04x", ch);
		} else {
			j_raw(j, (const char *)&ch, 1);
		}
	}
	j_raw(j, "\"", 1);
}

void j_open(struct json *j, char bracket)
{
	j_sep(j);
	j_raw(j, &bracket, 1);
	j->depth++;
	j->need_comma[j->depth] = false;
}

void j_close(struct json *j, char bracket)
{
	j_raw(j, &bracket, 1);
	j->depth--;
}

/* Continue an object whose opening and members were written by someone else (the child). */
void j_continue_object(struct json *j)
{
	j->depth = 1;
	j->need_comma[1] = true;
}

void j_key(struct json *j, const char *k)
{
	j_sep(j);
	j_quoted(j, k);
	j_raw(j, ":", 1);
	j->after_key = true;
}

void j_str(struct json *j, const char *v)
{
	j_sep(j);
	if (v)
		j_quoted(j, v);
	else
		j_raw(j, "null", 4);
}

void j_kstr(struct json *j, const char *k, const char *v) { j_key(j, k); j_str(j, v); }

void j_kint(struct json *j, const char *k, long long v)
{
	j_key(j, k);
	j_sep(j);
	j_printf(j, "%lld", v);
}

void j_kbool(struct json *j, const char *k, bool v)
{
	j_key(j, k);
	j_sep(j);
	j_raw(j, v ? "true" : "false", v ? 4 : 5);
}

void j_knull(struct json *j, const char *k)
{
	j_key(j, k);
	j_sep(j);
	j_raw(j, "null", 4);
}
