/* files.c: training data as stored files. file.upload / list / get / delete, the data
 * specs of job.submit turned into file ids, and a job's tokens loaded back by id.
 *
 * Every job holds only file ids: {file_id} names an uploaded file, inline {text} and
 * {tokens} are stored as files at submit, and {path} (only with --data-dir) is read from
 * inside that directory and snapshotted into the store, so a job is pinned to the bytes it
 * was given. A file is content-addressed ("file-" + SHA-256 hex), so the same bytes are
 * stored once, and the runner checks at every (re)start that the bytes still hash to it.
 *
 * files_lock orders the two loop/pool paths that could race: a submit checking that its
 * files exist and queueing its job, and a delete checking that no queued or running job
 * uses the file and deleting it. It is taken before the jobs lock and before any store
 * write, never while either is held. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qlorad.h"

static pthread_mutex_t files_lock = PTHREAD_MUTEX_INITIALIZER;

void files_hold(void)
{
    pthread_mutex_lock(&files_lock);
}

void files_release(void)
{
    pthread_mutex_unlock(&files_lock);
}

/* ---- records on the wire ---- */

#define F(key, kind, member) S_FIELD(store_file_info, key, kind, member, 0)
static const schema_field file_fields[] = {
    F("file_id", SK_CHARS, id),
    F("bytes", SK_UINT, bytes),
    F("filename", SK_CHARS, filename),
    F("created_at", SK_REAL, created_at),
    F("purpose", SK_CHARS, purpose),
};
#undef F
static const schema file_record = SCHEMA(file_fields);

static void reply_file(req *r, const store_file_info *f)
{
    mp_out o;
    reply_begin(r, &o);
    schema_pack(&o.pk, &file_record, f, SCHEMA_WIRE);
    reply_end(r, &o);
}

/* A client's file name for display: its last path component, printable ASCII only
 * (anything else becomes '_'), at most STORE_FILE_NAME_MAX bytes. */
static void sanitize_filename(const char *s, size_t n, char *out)
{
    for (size_t i = n; i > 0; i--)
        if (s[i - 1] == '/' || s[i - 1] == '\\') {
            s += i, n -= i;
            break;
        }
    if (n > STORE_FILE_NAME_MAX)
        n = STORE_FILE_NAME_MAX;
    for (size_t i = 0; i < n; i++)
        out[i] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '_';
    out[n] = 0;
}

/* ---- ops ---- */

void op_file_upload(req *r)
{
    qd *d = r->d;
    const msgpack_object *data = r->arg[UPLOAD_DATA], *name = r->arg[UPLOAD_FILENAME],
                          *purpose = r->arg[UPLOAD_PURPOSE];
    const char *bytes = data->type == MSGPACK_OBJECT_BIN ? data->via.bin.ptr : data->via.str.ptr;
    size_t len = data->type == MSGPACK_OBJECT_BIN ? data->via.bin.size : data->via.str.size;
    char filename[STORE_FILE_NAME_MAX + 1] = "", why[STORE_FILE_PURPOSE_MAX + 1] = "fine-tune", err[600];
    if (len == 0) {
        reply_error(r, ERR_INVALID_ARGUMENT, "data: empty");
        return;
    }
    if (name)
        sanitize_filename(name->via.str.ptr, name->via.str.size, filename);
    if (purpose) {
        size_t n = purpose->via.str.size;
        int ok = n >= 1 && n <= STORE_FILE_PURPOSE_MAX;
        for (size_t i = 0; ok && i < n; i++) {
            char ch = purpose->via.str.ptr[i];
            ok = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
        }
        if (!ok) {
            reply_error(r, ERR_INVALID_ARGUMENT, "purpose: must be [a-z0-9_-]{1,%d}", STORE_FILE_PURPOSE_MAX);
            return;
        }
        memcpy(why, purpose->via.str.ptr, n);
        why[n] = 0;
    }
    store_file_info info;
    int existed;
    if (store_file_put(d->db, bytes, len, filename, why, &info, &existed, err, sizeof err) < 0) {
        reply_error(r, store_error(err), "%s", err);
        return;
    }
    if (!existed)
        qd_log(LOG_INFO, "file %s stored: %llu bytes", info.id, (unsigned long long)info.bytes);
    reply_file(r, &info);
}

void op_file_list(req *r)
{
    store_file_info *list;
    size_t n;
    char err[600];
    if (store_file_list(r->d->db, &list, &n, err, sizeof err) < 0) {
        reply_error(r, ERR_INTERNAL, "%s", err);
        return;
    }
    reply_records(r, "files", &file_record, list, n, sizeof *list);
    free(list);
}

/* The file_id argument v as a C string; -1 after replying when it is not an id. */
static int file_id_arg(req *r, const msgpack_object *v, char id[STORE_FILE_ID_LEN + 1])
{
    if (v->via.str.size != STORE_FILE_ID_LEN || memchr(v->via.str.ptr, 0, v->via.str.size) ||
        (memcpy(id, v->via.str.ptr, STORE_FILE_ID_LEN), id[STORE_FILE_ID_LEN] = 0, !store_file_id_valid(id))) {
        reply_error(r, ERR_INVALID_ARGUMENT, "file_id: must be \"file-\" and 64 lowercase hex digits");
        return -1;
    }
    return 0;
}

void op_file_get(req *r)
{
    char id[STORE_FILE_ID_LEN + 1], err[600];
    store_file_info info;
    int nf;
    if (file_id_arg(r, r->arg[FILE_GET_ID], id) < 0)
        return;
    if (store_file_get(r->d->db, id, &info, NULL, NULL, &nf, err, sizeof err) < 0)
        reply_error(r, nf ? ERR_NOT_FOUND : ERR_INTERNAL, "file_id: %s", err);
    else
        reply_file(r, &info);
}

void op_file_delete(req *r)
{
    qd *d = r->d;
    char id[STORE_FILE_ID_LEN + 1], err[600];
    int deleted = 0, rc = 0;
    if (file_id_arg(r, r->arg[FILE_DELETE_ID], id) < 0)
        return;
    files_hold();
    uint64_t user = jobs_file_user(d, id);
    if (!user)
        rc = store_file_delete(d->db, id, &deleted, err, sizeof err);
    files_release();
    if (user) {
        reply_error(r, ERR_CONFLICT, "file_id: %s is the data of job %llu, which has not finished", id,
                    (unsigned long long)user);
        return;
    }
    if (rc < 0) {
        reply_error(r, store_error(err), "%s", err);
        return;
    }
    if (deleted)
        qd_log(LOG_INFO, "file %s deleted", id);
    reply_deleted(r, deleted);
}

/* ---- paths inside --data-dir ---- */

/* Reads rel, a relative path below the directory dirfd, without following any symbolic
 * link and without blocking on anything that is not a regular file (a FIFO opened
 * O_NONBLOCK for reading returns at once and is refused by fstat). *buf malloc'd. NULL,
 * or what is wrong, in words that tell nothing of what lies outside the directory. */
static const char *read_beneath(int dirfd, const char *rel, size_t cap, char **buf, size_t *len, char *why,
                                size_t whylen)
{
    *buf = NULL, *len = 0;
    if (rel[0] == '/')
        return "must be a relative path inside --data-dir";
    char *copy = strdup(rel);
    if (!copy)
        return "out of memory";
    const char *what = NULL;
    int fd = dup(dirfd);
    char *save = NULL, *comp = strtok_r(copy, "/", &save);
    if (fd < 0)
        what = "cannot be read";
    while (!what && comp) {
        char *next = strtok_r(NULL, "/", &save);
        if (!strcmp(comp, "..")) {
            what = "must not have '..' components";
            break;
        }
        if (!strcmp(comp, ".")) {
            comp = next;
            continue;
        }
        int flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | (next ? O_DIRECTORY : O_NONBLOCK);
        int sub = openat(fd, comp, flags);
        if (sub < 0) {
            int e = errno;
            what = e == ENOENT ? "no such file in --data-dir"
                 : e == ELOOP ? "a symbolic link on the way (links are not followed)"
                 : e == ENOTDIR ? "a component of the path is not a directory"
                 : e == EACCES ? "permission denied"
                 : (snprintf(why, whylen, "cannot be opened: %s", strerror(e)), why);
        }
        close(fd);
        fd = sub;
        comp = next;
    }
    free(copy);
    struct stat st;
    if (!what && fd >= 0 && fstat(fd, &st) < 0)
        what = "cannot be read";
    else if (!what && !S_ISREG(st.st_mode))
        what = "not a regular file";
    else if (!what && (uint64_t)st.st_size > cap)
        what = (snprintf(why, whylen, "%lld bytes exceed the cap of %zu (max_frame)", (long long)st.st_size, cap), why);
    else if (!what && st.st_size == 0)
        what = "empty file";
    else if (!what && !(*buf = malloc((size_t)st.st_size)))
        what = "out of memory";
    while (!what && *len < (size_t)st.st_size) {
        ssize_t got = read(fd, *buf + *len, (size_t)st.st_size - *len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            what = (snprintf(why, whylen, "cannot be read: %s", strerror(errno)), why);
        else if (got == 0)
            break; /* it shrank meanwhile: what was there is the snapshot */
        else
            *len += (size_t)got;
    }
    if (fd >= 0)
        close(fd);
    if (!what && *len == 0)
        what = "empty file";
    if (what) {
        free(*buf);
        *buf = NULL, *len = 0;
    }
    return what;
}

/* ---- data specs of job.submit ---- */

/* {tokens: [[int]]} checked and concatenated into little-endian u32s. */
static qd_error tokens_bytes(const msgpack_object *v, const char *field, int vocab, char **buf, size_t *len,
                             char *err, size_t errlen)
{
    if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size == 0) {
        snprintf(err, errlen, "%s.tokens: must be a non-empty array of token arrays", field);
        return ERR_BAD_REQUEST;
    }
    size_t total = 0;
    for (uint32_t i = 0; i < v->via.array.size; i++) {
        const msgpack_object *a = &v->via.array.ptr[i];
        if (a->type != MSGPACK_OBJECT_ARRAY) {
            snprintf(err, errlen, "%s.tokens[%u]: must be an array of token ids", field, i);
            return ERR_BAD_REQUEST;
        }
        for (uint32_t j = 0; j < a->via.array.size; j++)
            if (a->via.array.ptr[j].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a->via.array.ptr[j].via.u64 >= (uint64_t)vocab) {
                snprintf(err, errlen, "%s.tokens[%u][%u]: must be a token id in 0..%d", field, i, j, vocab - 1);
                return ERR_INVALID_ARGUMENT;
            }
        total += a->via.array.size;
    }
    if (total == 0) {
        snprintf(err, errlen, "%s.tokens: holds no token", field);
        return ERR_INVALID_ARGUMENT;
    }
    unsigned char *out = malloc(total * 4);
    if (!out) {
        snprintf(err, errlen, "out of memory for %zu tokens", total);
        return ERR_BUSY;
    }
    size_t k = 0;
    for (uint32_t i = 0; i < v->via.array.size; i++)
        for (uint32_t j = 0; j < v->via.array.ptr[i].via.array.size; j++, k += 4) {
            uint32_t t = (uint32_t)v->via.array.ptr[i].via.array.ptr[j].via.u64;
            for (int b = 0; b < 4; b++)
                out[k + b] = (unsigned char)(t >> (8 * b));
        }
    *buf = (char *)out, *len = total * 4;
    return ERR_NONE;
}

qd_error files_resolve(qd *d, const msgpack_object *m, const char *field, job_data *out, char *err,
                       size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (m->type != MSGPACK_OBJECT_MAP || m->via.map.size != 1 || m->via.map.ptr[0].key.type != MSGPACK_OBJECT_STR) {
        snprintf(err, errlen, "%s: must be a map with one of file_id, text, tokens, path", field);
        return ERR_BAD_REQUEST;
    }
    const msgpack_object *k = &m->via.map.ptr[0].key, *v = &m->via.map.ptr[0].val;
    const char *key = mp_is_str(k, "file_id") ? "file_id" : mp_is_str(k, "text") ? "text"
                    : mp_is_str(k, "path") ? "path" : mp_is_str(k, "tokens") ? "tokens" : NULL;
    if (!key) {
        snprintf(err, errlen, "%s: must be a map with one of file_id, text, tokens, path", field);
        return ERR_BAD_REQUEST;
    }
    if (strcmp(key, "tokens") && v->type != MSGPACK_OBJECT_STR) {
        snprintf(err, errlen, "%s.%s: must be a string", field, key);
        return ERR_BAD_REQUEST;
    }
    if (!strcmp(key, "file_id")) {
        store_file_info info;
        int nf;
        char why[600];
        if (v->via.str.size == STORE_FILE_ID_LEN && !memchr(v->via.str.ptr, 0, v->via.str.size))
            memcpy(out->file_id, v->via.str.ptr, STORE_FILE_ID_LEN);
        if (!store_file_id_valid(out->file_id)) {
            snprintf(err, errlen, "%s.file_id: must be \"file-\" and 64 lowercase hex digits", field);
            return ERR_INVALID_ARGUMENT;
        }
        if (store_file_get(d->db, out->file_id, &info, NULL, NULL, &nf, why, sizeof why) < 0) {
            snprintf(err, errlen, "%s.file_id: %s", field, why);
            return nf ? ERR_NOT_FOUND : ERR_INTERNAL;
        }
        out->bytes = info.bytes;
        if (!strcmp(info.purpose, "tokens")) /* stored from inline tokens: u32 ids, not text */
            out->format = DATA_TOKENS;
        return ERR_NONE;
    }
    char *owned = NULL;
    const char *bytes = NULL, *purpose = "fine-tune", *filename = "";
    qd_error code;
    size_t len = 0;
    char why[200], name[STORE_FILE_NAME_MAX + 1];
    if (!strcmp(key, "text")) {
        bytes = v->via.str.ptr, len = v->via.str.size;
        if (len == 0) {
            snprintf(err, errlen, "%s.text: empty", field);
            return ERR_INVALID_ARGUMENT;
        }
    } else if (!strcmp(key, "tokens")) {
        if ((code = tokens_bytes(v, field, d->model.cfg.vocab_size, &owned, &len, err, errlen)))
            return code;
        bytes = owned, purpose = "tokens", out->format = DATA_TOKENS;
    } else {
        /* the same answer for every path when paths are off: nothing about the file */
        if (d->data_dir_fd < 0) {
            snprintf(err, errlen,
                     "%s.path: the daemon was started without --data-dir, so paths are refused; upload the file "
                     "(file.upload) and pass {file_id}", field);
            return ERR_INVALID_ARGUMENT;
        }
        char *rel = mp_strdup(v);
        const char *what = !rel ? "out of memory"
                         : v->via.str.size == 0 || memchr(v->via.str.ptr, 0, v->via.str.size) ? "must be a non-empty path without NUL"
                         : read_beneath(d->data_dir_fd, rel, d->max_frame, &owned, &len, why, sizeof why);
        if (what) {
            free(rel);
            snprintf(err, errlen, "%s.path: %s", field, what);
            return ERR_INVALID_ARGUMENT;
        }
        sanitize_filename(rel, strlen(rel), name);
        free(rel);
        bytes = owned, filename = name;
    }
    store_file_info info;
    int existed;
    if (store_file_put(d->db, bytes, len, filename, purpose, &info, &existed, err, errlen) < 0) {
        free(owned);
        return store_error(err);
    }
    free(owned);
    memcpy(out->file_id, info.id, sizeof out->file_id);
    out->bytes = info.bytes;
    return ERR_NONE;
}

int files_exist(qd *d, const job_data *a, const job_data *b, char *err, size_t errlen)
{
    const job_data *both[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        store_file_info info;
        int nf;
        if (both[i] && both[i]->file_id[0] &&
            store_file_get(d->db, both[i]->file_id, &info, NULL, NULL, &nf, err, errlen) < 0)
            return -1;
    }
    return 0;
}

/* The JSONL examples of a file's bytes, parsed, encoded (h's template) and cut to rows. */
static int load_examples(qd *d, const job_data *data, const char *field, const train_hyper *h, const char *bytes,
                         size_t len, sft_data *sft, char *err, size_t errlen)
{
    char name[96];
    snprintf(name, sizeof name, "%s.file_id %s", field, data->file_id);
    sft_chat chat;
    const char *builtin = h->chat_template == CHAT_MODEL ? NULL : train_vocab_name(&train_chat_templates,
                                                                                  h->chat_template);
    int rc = sft_chat_load(&chat, d->model_dir, builtin, err, errlen) < 0 ? -1 : 0;
    const sft_options opt = {h->train_on_prompt, chat.chat, chat.bos, chat.eos};
    if (rc == 0)
        rc = sft_parse(sft, name, bytes, len, d->tok, &opt, err, errlen);
    sft_chat_free(&chat);
    if (rc == 0)
        sft_cut(sft, (size_t)h->seq_len + 1);
    return rc;
}

/* A stored file's bytes (malloc'd), with the message naming field when it is gone. */
static int file_bytes(qd *d, const job_data *data, const char *field, void **bytes, size_t *len, char *err,
                      size_t errlen)
{
    store_file_info info;
    int nf;
    char why[600];
    if (store_file_get(d->db, data->file_id, &info, bytes, len, &nf, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s.file_id: %s%s", field, why, nf ? " (deleted?)" : "");
        return -1;
    }
    return 0;
}

qd_error files_check_data(qd *d, job_data *data, const char *field, const train_hyper *h, char *err, size_t errlen)
{
    void *bytes;
    size_t len;
    if (data->format == DATA_TOKENS)
        return ERR_NONE; /* inline tokens, checked when they were stored */
    if (file_bytes(d, data, field, &bytes, &len, err, errlen) < 0)
        return ERR_NOT_FOUND;
    qd_error code = ERR_NONE;
    data->format = DATA_TEXT;
    if (sft_is_jsonl(bytes, len)) {
        sft_data sft;
        if (load_examples(d, data, field, h, bytes, len, &sft, err, errlen) < 0) {
            code = ERR_INVALID_ARGUMENT;
        } else {
            data->format = sft.format == SFT_MESSAGES ? DATA_MESSAGES
                         : sft.format == SFT_TEXT     ? DATA_TEXT_EXAMPLES
                                                      : DATA_PROMPT_COMPLETION;
            sft_free(&sft);
        }
    }
    free(bytes);
    return code;
}

int files_load_data(qd *d, const job_data *data, const char *field, const train_hyper *h, int **ids, size_t *n,
                    sft_data *sft, int *is_sft, char *err, size_t errlen)
{
    *is_sft = 0;
    void *bytes;
    size_t len;
    int rc = -1;
    *ids = NULL, *n = 0;
    if (file_bytes(d, data, field, &bytes, &len, err, errlen) < 0)
        return -1;
    if (data->format == DATA_TOKENS) {
        const unsigned char *b = bytes;
        if (len % 4 || !(*ids = malloc(len ? len : 1))) {
            snprintf(err, errlen, "%s.file_id: %s: %s", field, data->file_id, len % 4 ? "not a token file" : "out of memory");
            free(bytes);
            return -1;
        }
        for (size_t i = 0; i < len / 4; i++) {
            uint32_t t = (uint32_t)b[4 * i] | (uint32_t)b[4 * i + 1] << 8 | (uint32_t)b[4 * i + 2] << 16 |
                         (uint32_t)b[4 * i + 3] << 24;
            if (t >= (uint32_t)d->model.cfg.vocab_size) {
                snprintf(err, errlen, "%s.file_id: %s: token %u at %zu is not below the vocabulary size %d", field,
                         data->file_id, t, i, d->model.cfg.vocab_size);
                free(bytes), free(*ids), *ids = NULL;
                return -1;
            }
            (*ids)[i] = (int)t;
        }
        *n = len / 4;
        rc = 0;
    } else if (sft_is_jsonl(bytes, len)) {
        rc = load_examples(d, data, field, h, bytes, len, sft, err, errlen);
        *is_sft = rc == 0;
    } else {
        rc = tok_encode(d->tok, bytes, len, TOK_ADD_SPECIAL, ids, n);
        if (rc < 0)
            snprintf(err, errlen, "%s.file_id: %s: %s", field, data->file_id, tok_strerror(rc));
    }
    free(bytes);
    return rc;
}
