/*
 * gpuscan.c - what the fake libcuda and libnvidia-ml know about "the GPUs".
 *
 * Not a library of its own: libcuda.c and libnvidia-ml.c #include it, so each
 * fake library stays one self-contained .so with no extra dependency.
 *
 * A GPU is visible when its device node /dev/nvidia<minor> exists AND opening
 * it fails with ENXIO.  On the test machine the NVIDIA majors (195, ...) have
 * no driver, so ENXIO means "the node is there and the device cgroup let the
 * open through"; EPERM means the cgroup denied it; ENOENT means the node was
 * not injected.  Model, UUID and PCI bus id come from
 * /proc/driver/nvidia/gpus/<bus>/information, matched by "Device Minor".
 * Visible GPUs are numbered in PCI bus order, as nvidia-smi and CUDA do.
 *
 * NVLAUNCH_FAKE_SYSROOT, when set, is prefixed to every /dev and /proc path,
 * so a test can run these libraries on the host against a fake host tree.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FAKE_MAX_GPUS 64

struct fake_gpu {
    int minor;
    char bus[32];     /* "0000:06:00.0"; "" when /proc has no information file */
    char model[96];
    char uuid[64];
};

/* `path` (absolute) under NVLAUNCH_FAKE_SYSROOT, into buf. */
static const char *fake_path(char *buf, size_t n, const char *path)
{
    const char *root = getenv("NVLAUNCH_FAKE_SYSROOT");
    snprintf(buf, n, "%s%s", root ? root : "", path);
    return buf;
}

/* 0 if `path` opens read-write, else the errno of the failed open. */
static int fake_open_errno(const char *path)
{
    char p[4096];
    int fd = open(fake_path(p, sizeof p, path), O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return errno;
    close(fd);
    return 0;
}

/* Present and let through: ENXIO from the driverless major (or a real open). */
static int fake_node_usable(const char *path)
{
    int e = fake_open_errno(path);
    return e == 0 || e == ENXIO;
}

/* Copy the value of "Key: \t\t value" lines, trimmed, when the key matches. */
static int fake_field(const char *line, const char *key, char *out, size_t n)
{
    size_t k = strlen(key);
    if (strncmp(line, key, k) != 0 || line[k] != ':')
        return 0;
    const char *v = line + k + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    size_t len = strcspn(v, "\r\n");
    while (len > 0 && isspace((unsigned char)v[len - 1]))
        len--;
    if (len >= n)
        len = n - 1;
    memcpy(out, v, len);
    out[len] = '\0';
    return 1;
}

/* Parse one information file; 0 on success. */
static int fake_read_information(const char *file, struct fake_gpu *g)
{
    FILE *f = fopen(file, "re");
    if (!f)
        return -1;
    char line[256], minor[16] = "";
    memset(g, 0, sizeof *g);
    while (fgets(line, sizeof line, f)) {
        fake_field(line, "Model", g->model, sizeof g->model);
        fake_field(line, "GPU UUID", g->uuid, sizeof g->uuid);
        fake_field(line, "Bus Location", g->bus, sizeof g->bus);
        fake_field(line, "Device Minor", minor, sizeof minor);
    }
    fclose(f);
    if (!minor[0])
        return -1;
    g->minor = atoi(minor);
    return 0;
}

static int fake_gpu_cmp(const void *a, const void *b)
{
    const struct fake_gpu *x = a, *y = b;
    /* GPUs without a bus id (no /proc entry) sort last, by minor. */
    if (!x->bus[0] != !y->bus[0])
        return x->bus[0] ? -1 : 1;
    int c = strcmp(x->bus, y->bus);
    return c ? c : x->minor - y->minor;
}

/* Fill `out` with the visible GPUs in PCI bus order; returns how many. */
static int fake_scan_gpus(struct fake_gpu *out, int max)
{
    struct fake_gpu info[FAKE_MAX_GPUS];
    int ninfo = 0, n = 0;
    char p[4096], file[4096 + 300];

    DIR *d = opendir(fake_path(p, sizeof p, "/proc/driver/nvidia/gpus"));
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) && ninfo < FAKE_MAX_GPUS) {
            if (e->d_name[0] == '.')
                continue;
            snprintf(file, sizeof file, "%s/%s/information", p, e->d_name);
            if (fake_read_information(file, &info[ninfo]) == 0)
                ninfo++;
        }
        closedir(d);
    }

    d = opendir(fake_path(p, sizeof p, "/dev"));
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        const char *s = e->d_name;
        if (strncmp(s, "nvidia", 6) != 0 || !s[6] || strspn(s + 6, "0123456789") != strlen(s + 6))
            continue;
        char node[300];
        snprintf(node, sizeof node, "/dev/%s", s);
        if (!fake_node_usable(node))
            continue;
        int minor = atoi(s + 6), i;
        for (i = 0; i < ninfo && info[i].minor != minor; i++)
            ;
        if (i < ninfo) {
            out[n] = info[i];
        } else {
            memset(&out[n], 0, sizeof out[n]);
            out[n].minor = minor;
            snprintf(out[n].model, sizeof out[n].model, "Fake GPU");
            snprintf(out[n].uuid, sizeof out[n].uuid,
                     "GPU-00000000-0000-0000-0000-%012d", minor);
        }
        n++;
    }
    closedir(d);
    qsort(out, n, sizeof *out, fake_gpu_cmp);
    return n;
}

/* "ModifyDeviceFiles: 1" in /proc/driver/nvidia/params (the real default). */
__attribute__((unused)) static int fake_modify_device_files(void)
{
    char p[4096], line[256];
    int on = 0;
    FILE *f = fopen(fake_path(p, sizeof p, "/proc/driver/nvidia/params"), "re");
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "ModifyDeviceFiles:", 18) == 0)
            on = atoi(line + 18) != 0;
    fclose(f);
    return on;
}
