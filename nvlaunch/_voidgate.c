/* nvlaunch's void gate: the hooks.d entry's program (setup podman, setup crio).
 *
 *   _voidgate PYTHON -I -S -c CODE hook STAGE      (argv[1:] is nvlaunch's hook command)
 *
 * A hooks.d file runs its hook for every container (`when: always`: the schema has no
 * condition on the environment), and a container that asks for no GPU costs nvlaunch's
 * Python hook some 17 ms only to find NVIDIA_VISIBLE_DEVICES unset.  This program
 * decides that one case without Python: where it is certain that `nvlaunch hook STAGE`
 * would read the state and config.json and exit 0 having done nothing, it exits 0;
 * in every other case, and at the first doubt, it execs argv[1:] with the state it read
 * on stdin again, so the Python hook does what it always does (and says any error).
 *
 * "Certain" mirrors nvlaunch/frontends/oci_hook.py up to its void exit, strictly:
 *  - the command is exactly PYTHON -I -S -c CODE hook STAGE, STAGE a known stage;
 *  - none of NVLAUNCH_DEBUG, NVLAUNCH_DEBUG_FILE, NVLAUNCH_STOP_AT, NVLAUNCH_HOOK_TIMEOUT
 *    is set, and LD_PRELOAD, LD_AUDIT, LD_LIBRARY_PATH are unset or empty;
 *  - the state (at most 1 MiB) and the bundle's config.json (a regular file of at most
 *    16 MiB, opened without blocking) are each one JSON document in valid UTF-8 that
 *    this parser accepts: RFC 8259 with no lone surrogate, nesting below 64, numbers
 *    below 100 characters (Python's parser accepts all of these the same way);
 *  - the state is an object whose last "bundle" is a non-empty absolute path without NUL;
 *    config.json is an object;
 *  - of config.json's last process.env (last "process", its last "env"), as Python's
 *    process_env reads it (KEY=VALUE strings, the last of a key wins): no key or value
 *    holds NUL; the container's variables other than PATH, HOME, TERM, HOSTNAME, LANG,
 *    LC_ALL, container and NVIDIA_* are not all in this process's environment with the
 *    same values (that is an entry without `env`, which the Python hook refuses); and
 *    NVIDIA_VISIBLE_DEVICES is unset, or empty or "void" once ASCII white space is
 *    stripped.
 * The command line and the environment are checked before anything is read (otherwise
 * the exec comes first, stdin untouched); reading the state is bounded by the Python
 * hook's default time limit.
 * It reads, and writes nothing but the state for the exec; it never follows anything
 * of the container's rootfs (it never looks there).  Any failure of its own: the exec.
 * tests/unit/test_voidgate.py runs every case both ways and compares.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_STATE (1 << 20)
#define MAX_CONFIG (16 << 20)
#define MAX_DEPTH 64
#define MAX_NUMBER 100
#define HOOK_TIMEOUT_S 30

/* ---- a strict JSON reader over a buffer ------------------------------------------ */

typedef struct { const unsigned char *p, *end; int depth; } Reader;
typedef struct { char *s; size_t n, cap; } Buf;        /* a decoded string (UTF-8) */
typedef struct { Buf key, value; } Var;
typedef struct { Var *v; size_t n, cap; } Env;

enum { ANY, STATE_TOP, CONFIG_TOP, PROCESS, ENV_LIST };
typedef struct {
    Buf bundle; int bundle_seen, bundle_is_string;     /* the state's last "bundle" */
    Env env; int env_set;                              /* the last process.env */
    int top_is_object;
} Found;

static int buf_add(Buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *t = realloc(b->s, cap);
        if (!t) return -1;
        b->s = t; b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
    return 0;
}

static void env_clear(Env *e) {
    for (size_t i = 0; i < e->n; i++) { free(e->v[i].key.s); free(e->v[i].value.s); }
    e->n = 0;
}

static void ws(Reader *r) {
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
        r->p++;
}

static int hex4(Reader *r, unsigned *out) {
    if (r->end - r->p < 4) return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = r->p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return -1;
    }
    r->p += 4;
    *out = v;
    return 0;
}

static int put_utf8(Buf *b, unsigned cp) {
    char t[4]; size_t n;
    if (cp < 0x80) { t[0] = (char)cp; n = 1; }
    else if (cp < 0x800) { t[0] = (char)(0xC0 | cp >> 6); t[1] = (char)(0x80 | (cp & 0x3F)); n = 2; }
    else if (cp < 0x10000) {
        t[0] = (char)(0xE0 | cp >> 12); t[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        t[2] = (char)(0x80 | (cp & 0x3F)); n = 3;
    } else {
        t[0] = (char)(0xF0 | cp >> 18); t[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        t[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); t[3] = (char)(0x80 | (cp & 0x3F)); n = 4;
    }
    return buf_add(b, t, n);
}

/* A string at r->p (the opening quote); decoded into `out` when out is not NULL.  Raw
 * bytes were checked as UTF-8 before parsing; raw control characters are refused
 * (Python's strict mode), and so is a lone surrogate escape. */
static int string(Reader *r, Buf *out) {
    if (r->p >= r->end || *r->p != '"') return -1;
    r->p++;
    if (out) { out->n = 0; if (buf_add(out, "", 0)) return -1; }
    for (;;) {
        const unsigned char *start = r->p;
        while (r->p < r->end && *r->p != '"' && *r->p != '\\' && *r->p >= 0x20) r->p++;
        if (out && buf_add(out, (const char *)start, (size_t)(r->p - start))) return -1;
        if (r->p >= r->end || *r->p < 0x20) return -1;
        if (*r->p == '"') { r->p++; return 0; }
        r->p++;                                         /* a backslash */
        if (r->p >= r->end) return -1;
        unsigned char c = *r->p++;
        const char *rep = NULL;
        switch (c) {
        case '"': rep = "\""; break;
        case '\\': rep = "\\"; break;
        case '/': rep = "/"; break;
        case 'b': rep = "\b"; break;
        case 'f': rep = "\f"; break;
        case 'n': rep = "\n"; break;
        case 'r': rep = "\r"; break;
        case 't': rep = "\t"; break;
        case 'u': {
            unsigned cp, lo;
            if (hex4(r, &cp)) return -1;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return -1;       /* a lone low surrogate */
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (r->end - r->p < 6 || r->p[0] != '\\' || r->p[1] != 'u') return -1;
                r->p += 2;
                if (hex4(r, &lo) || lo < 0xDC00 || lo > 0xDFFF) return -1;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (out && put_utf8(out, cp)) return -1;
            continue;
        }
        default: return -1;
        }
        if (out && buf_add(out, rep, 1)) return -1;
    }
}

static int number(Reader *r) {
    const unsigned char *s = r->p;
    if (r->p < r->end && *r->p == '-') r->p++;
    if (r->p >= r->end) return -1;
    if (*r->p == '0') r->p++;
    else if (*r->p >= '1' && *r->p <= '9') while (r->p < r->end && *r->p >= '0' && *r->p <= '9') r->p++;
    else return -1;
    if (r->p < r->end && *r->p == '.') {
        r->p++;
        if (r->p >= r->end || *r->p < '0' || *r->p > '9') return -1;
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9') r->p++;
    }
    if (r->p < r->end && (*r->p == 'e' || *r->p == 'E')) {
        r->p++;
        if (r->p < r->end && (*r->p == '+' || *r->p == '-')) r->p++;
        if (r->p >= r->end || *r->p < '0' || *r->p > '9') return -1;
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9') r->p++;
    }
    return r->p - s < MAX_NUMBER ? 0 : -1;
}

static int literal(Reader *r, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, word, n)) return -1;
    r->p += n;
    return 0;
}

static int value(Reader *r, int ctx, Found *f);

/* Where a key leads: what to collect from its value. */
static int child_ctx(int ctx, const Buf *key) {
    if (ctx == CONFIG_TOP && strcmp(key->s, "process") == 0 && key->n == 7) return PROCESS;
    if (ctx == PROCESS && strcmp(key->s, "env") == 0 && key->n == 3) return ENV_LIST;
    return ANY;
}

static int object(Reader *r, int ctx, Found *f) {
    Buf key = {0};
    int rc = -1;
    r->p++;                                             /* { */
    ws(r);
    if (r->p < r->end && *r->p == '}') { r->p++; return 0; }
    for (;;) {
        ws(r);
        if (string(r, &key)) goto out;
        ws(r);
        if (r->p >= r->end || *r->p != ':') goto out;
        r->p++;
        ws(r);
        if (ctx == STATE_TOP && key.n == 6 && strcmp(key.s, "bundle") == 0) {
            f->bundle_seen = 1;
            f->bundle_is_string = r->p < r->end && *r->p == '"';
            if (f->bundle_is_string ? string(r, &f->bundle) : value(r, ANY, f)) goto out;
        } else {
            int sub = child_ctx(ctx, &key);
            if (sub != ANY) {                           /* "process", or its "env" */
                /* the last key of that name wins: what an earlier one gave is dropped */
                env_clear(&f->env);
                f->env_set = 0;
            }
            if (value(r, sub, f)) goto out;
        }
        ws(r);
        if (r->p < r->end && *r->p == ',') { r->p++; continue; }
        if (r->p < r->end && *r->p == '}') { r->p++; rc = 0; goto out; }
        goto out;
    }
out:
    free(key.s);
    return rc;
}

static int env_item(Reader *r, Found *f) {
    Buf s = {0};
    if (string(r, &s)) { free(s.s); return -1; }
    if (strlen(s.s) != s.n) { free(s.s); return -1; }  /* a NUL in it: Python decides */
    char *eq = memchr(s.s, '=', s.n);
    if (!eq) { free(s.s); return 0; }                   /* not KEY=VALUE: left out */
    if (f->env.n == f->env.cap) {
        size_t cap = f->env.cap ? f->env.cap * 2 : 16;
        Var *t = realloc(f->env.v, cap * sizeof(Var));
        if (!t) { free(s.s); return -1; }
        f->env.v = t; f->env.cap = cap;
    }
    Var *v = &f->env.v[f->env.n];
    memset(v, 0, sizeof *v);
    if (buf_add(&v->key, s.s, (size_t)(eq - s.s)) || buf_add(&v->value, eq + 1, s.n - (size_t)(eq - s.s) - 1)) {
        free(v->key.s); free(v->value.s); free(s.s);
        return -1;
    }
    f->env.n++;
    free(s.s);
    return 0;
}

static int array(Reader *r, int ctx, Found *f) {
    r->p++;                                             /* [ */
    if (ctx == ENV_LIST) f->env_set = 1;
    ws(r);
    if (r->p < r->end && *r->p == ']') { r->p++; return 0; }
    for (;;) {
        ws(r);
        if (ctx == ENV_LIST && r->p < r->end && *r->p == '"') {
            if (env_item(r, f)) return -1;
        } else if (value(r, ANY, f)) {
            return -1;
        }
        ws(r);
        if (r->p < r->end && *r->p == ',') { r->p++; continue; }
        if (r->p < r->end && *r->p == ']') { r->p++; return 0; }
        return -1;
    }
}

static int value(Reader *r, int ctx, Found *f) {
    int rc;
    if (r->p >= r->end) return -1;
    if (++r->depth > MAX_DEPTH) return -1;
    switch (*r->p) {
    case '{':
        if (ctx == STATE_TOP || ctx == CONFIG_TOP) f->top_is_object = 1;
        rc = object(r, ctx, f);
        break;
    case '[': rc = array(r, ctx, f); break;
    case '"': rc = string(r, NULL); break;
    case 't': rc = literal(r, "true"); break;
    case 'f': rc = literal(r, "false"); break;
    case 'n': rc = literal(r, "null"); break;
    default: rc = number(r); break;
    }
    r->depth--;
    return rc;
}

/* Python's strict UTF-8 decoder's rules: no overlong form, no surrogate, nothing past
 * U+10FFFF. */
static int valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t k; unsigned cp;
        if (c >= 0xC2 && c <= 0xDF) { k = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { k = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { k = 3; cp = c & 0x07; }
        else return 0;
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n || (s[i + j] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + j] & 0x3F);
        }
        if ((k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10FFFF
            || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += k + 1;
    }
    return 1;
}

/* One JSON document filling `data` (white space around it allowed). */
static int document(const unsigned char *data, size_t n, int ctx, Found *f) {
    if (!valid_utf8(data, n)) return -1;
    Reader r = {data, data + n, 0};
    ws(&r);
    if (value(&r, ctx, f)) return -1;
    ws(&r);
    return r.p == r.end && f->top_is_object ? 0 : -1;
}

/* ---- the decision ------------------------------------------------------------------- */

static const char *const STAGES[] = {"prestart", "create-runtime", "createRuntime",
                                     "create-container", "createContainer", NULL};
static const char *const COMMON[] = {"PATH", "HOME", "TERM", "HOSTNAME", "LANG", "LC_ALL",
                                     "container", NULL};

static int in_list(const char *s, const char *const *list) {
    for (; *list; list++) if (strcmp(s, *list) == 0) return 1;
    return 0;
}

/* Up to max + 1 bytes of `fd` (so that "more than max" can be told), until EOF. */
static int read_all(int fd, unsigned char **out, size_t *len, size_t max) {
    size_t cap = 65536 < max + 1 ? 65536 : max + 1, n = 0;
    unsigned char *b = malloc(cap);
    *out = b; *len = 0;
    if (!b) return -1;
    while (n < max + 1) {
        if (n == cap) {
            size_t grown = cap * 2 < max + 1 ? cap * 2 : max + 1;
            unsigned char *t = realloc(b, grown);
            if (!t) return -1;
            *out = b = t;
            cap = grown;
        }
        ssize_t got = read(fd, b + n, cap - n);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return -1;
        if (got == 0) break;
        n += (size_t)got;
        *len = n;
    }
    return 0;
}

/* White space Python's str.strip() removes too (it removes more: the gate's "void" is
 * never one Python would not call void). */
static int ascii_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* The container's variables say nothing to do: NVIDIA_VISIBLE_DEVICES unset, empty or
 * "void" (1); 0 where the Python hook must decide. */
static int void_env(const Env *e) {
    const Var *vis = NULL;
    int theirs = 0, all_ours = 1;
    if (e->n > 4096) return 0;                          /* the last-wins scan is quadratic */
    for (size_t i = e->n; i-- > 0;) {                   /* the last of a key wins */
        const Var *v = &e->v[i];
        int later = 0;
        for (size_t j = i + 1; j < e->n; j++)
            if (e->v[j].key.n == v->key.n && memcmp(e->v[j].key.s, v->key.s, v->key.n) == 0) { later = 1; break; }
        if (later) continue;
        if (strlen(v->value.s) != v->value.n) return 0;
        if (strcmp(v->key.s, "NVIDIA_VISIBLE_DEVICES") == 0) vis = v;
        if (in_list(v->key.s, COMMON) || strncmp(v->key.s, "NVIDIA_", 7) == 0) continue;
        if (v->key.n == 0) return 0;
        theirs = 1;
        const char *mine = getenv(v->key.s);
        if (!mine || strcmp(mine, v->value.s) != 0) all_ours = 0;
    }
    if (theirs && all_ours) return 0;                   /* the container's environment */
    if (!vis) return 1;
    const char *s = vis->value.s, *end = s + vis->value.n;
    while (s < end && ascii_space(*s)) s++;
    while (end > s && ascii_space(end[-1])) end--;
    return end == s || (end - s == 4 && memcmp(s, "void", 4) == 0);
}

/* The command line and the environment allow a decision here at all. */
static int eligible(int argc, char **argv) {
    if (argc != 8 || strcmp(argv[2], "-I") || strcmp(argv[3], "-S") || strcmp(argv[4], "-c")
        || strcmp(argv[6], "hook") || !in_list(argv[7], STAGES))
        return 0;
    const char *const unset[] = {"NVLAUNCH_DEBUG", "NVLAUNCH_DEBUG_FILE", "NVLAUNCH_STOP_AT",
                                 "NVLAUNCH_HOOK_TIMEOUT", NULL};
    for (const char *const *v = unset; *v; v++) if (getenv(*v)) return 0;
    const char *const loader[] = {"LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH", NULL};
    for (const char *const *v = loader; *v; v++) { const char *x = getenv(*v); if (x && *x) return 0; }
    return 1;
}

static int decide(const unsigned char *state, size_t state_len) {
    if (state_len > MAX_STATE) return 0;

    Found st = {0};
    int ok = document(state, state_len, STATE_TOP, &st) == 0 && st.bundle_seen && st.bundle_is_string
             && st.bundle.n > 0 && strlen(st.bundle.s) == st.bundle.n && st.bundle.s[0] == '/';
    if (!ok) return 0;
    Buf path = {0};
    const char *tail = st.bundle.s[st.bundle.n - 1] == '/' ? "config.json" : "/config.json";
    if (buf_add(&path, st.bundle.s, st.bundle.n) || buf_add(&path, tail, strlen(tail))) return 0;
    int fd = open(path.s, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return 0;
    struct stat sb;
    unsigned char *cfg = NULL;
    size_t cfg_len = 0;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode) || sb.st_size > MAX_CONFIG
        || read_all(fd, &cfg, &cfg_len, MAX_CONFIG) || cfg_len > MAX_CONFIG) {
        close(fd);
        return 0;
    }
    close(fd);
    Found cf = {0};
    if (document(cfg, cfg_len, CONFIG_TOP, &cf)) return 0;
    return void_env(&cf.env);
}

/* The Python hook, with what was read of stdin as its stdin again. */
static void run_python(char **argv, const unsigned char *state, size_t len) {
    int fd = (int)syscall(SYS_memfd_create, "nvlaunch-state", 1 /* MFD_CLOEXEC */);
    if (fd >= 0) {
        size_t done = 0;
        while (done < len) {
            ssize_t w = write(fd, state + done, len - done);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) break;
            done += (size_t)w;
        }
        if (done == len && lseek(fd, 0, SEEK_SET) == 0 && dup2(fd, 0) == 0) {
            close(fd);
            execv(argv[1], argv + 1);
            _exit(127);
        }
        close(fd);
    }
    int p[2];                      /* no memfd: a child feeds a pipe */
    if (pipe(p) == 0) {
        pid_t child = fork();
        if (child == 0) {
            close(p[0]);
            size_t done = 0;
            while (done < len) {
                ssize_t w = write(p[1], state + done, len - done);
                if (w < 0 && errno == EINTR) continue;
                if (w <= 0) break;
                done += (size_t)w;
            }
            _exit(0);
        }
        if (child > 0 && dup2(p[0], 0) == 0) {
            close(p[0]); close(p[1]);
            execv(argv[1], argv + 1);
        }
    }
    _exit(127);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    if (!eligible(argc, argv)) {      /* nothing read yet: the Python hook, as it is */
        execv(argv[1], argv + 1);
        _exit(127);
    }
    /* The Python hook's default bound (core/interrupt.py HOOK_TIMEOUT_S) on reading a
     * state from a runtime that never closes stdin: then SIGALRM ends this process. */
    alarm(HOOK_TIMEOUT_S);
    unsigned char *state = NULL;
    size_t len = 0;
    int readable = read_all(0, &state, &len, MAX_STATE) == 0;
    if (readable && decide(state, len) == 1) return 0;
    alarm(0);
    run_python(argv, state ? state : (const unsigned char *)"", len);
    return 127;
}
