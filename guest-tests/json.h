/*
 * json.h: the JSON emitter, for the child's record (record.c) and the parent's fields around it
 * (probe.c).
 */
#ifndef PROBE_JSON_H
#define PROBE_JSON_H

#define _GNU_SOURCE
#include <stdbool.h>
#include <stddef.h>

struct json {
	char *buf;
	size_t cap, len;
	bool overflow;
	int depth;
	bool need_comma[8];
	bool after_key;
};

void j_init(struct json *j, char *buf, size_t cap);
void j_raw(struct json *j, const char *s, size_t n);
void j_open(struct json *j, char bracket);
void j_close(struct json *j, char bracket);
void j_continue_object(struct json *j);
void j_key(struct json *j, const char *k);
void j_str(struct json *j, const char *v);
void j_kstr(struct json *j, const char *k, const char *v);
void j_kint(struct json *j, const char *k, long long v);
void j_kbool(struct json *j, const char *k, bool v);
void j_knull(struct json *j, const char *k);

#endif
