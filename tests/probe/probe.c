/*
 * probe.c - runs inside a test container and reports what the container sees.
 *
 * Every subcommand prints `key=value` tokens (several per line where noted)
 * on stdout, for tests/fakehost.py's parse_* helpers; exit 0 unless noted.
 *
 *   probe devices      one line per node under /dev/nvidia*, /dev/nvidia-caps*,
 *                      /dev/dri (recursively):
 *                        dev /dev/nvidia0 c 195:0 open=ENXIO mode=0666 uid=0 gid=0
 *                        link /dev/dri/by-path/pci-...-card -> ../card0
 *                        dir /dev/nvidia-caps
 *                      open= is the errno name of open(O_RDWR|O_NONBLOCK), or OK.
 *                      On the test machine the NVIDIA majors have no driver, so
 *                      ENXIO = present and allowed by the device cgroup, EPERM =
 *                      denied by it, EACCES = denied by the node's mode.
 *   probe dlopen LIB   dlopen(LIB, RTLD_NOW), then one line
 *                        dlopen=ok path=<l_name> realpath=<resolved> version=<v|none>
 *                      version is the fake driver's nvlaunch_fake_driver_version;
 *                      then cuda=<cuDriverGetVersion>, cuInit=<rc>, and after a
 *                      successful cuInit count=<n> and device<i>=<name> lines,
 *                      when LIB has those symbols.  Exit 2 when dlopen fails
 *                      (prints dlopen=fail error=<dlerror>).
 *   probe ids          uid, gid, euid, egid, groups=a,b and the Cap*, NoNewPrivs
 *                      and Seccomp lines of /proc/self/status (as key=value).
 *   probe open PATH    path=PATH open=<errno name or OK>
 *   probe mounts       mount target=... fstype=... source=... opts=... per line
 *                      of /proc/self/mountinfo (opts: per-mount options)
 *
 * Built by tests/fakehost.py:probe_binary() (dynamic glibc, -ldl).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static const char *errno_name(int e)
{
    static char buf[16];
    switch (e) {
    case 0: return "OK";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EIO: return "EIO";
    case ENXIO: return "ENXIO";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case ENODEV: return "ENODEV";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case EINVAL: return "EINVAL";
    case ETXTBSY: return "ETXTBSY";
    case EROFS: return "EROFS";
    case ELOOP: return "ELOOP";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    }
    snprintf(buf, sizeof buf, "E%d", e);
    return buf;
}

static int open_errno(const char *path)
{
    int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return errno;
    close(fd);
    return 0;
}

/* Print `path`; descend into directories. */
static void report(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        printf("missing %s error=%s\n", path, errno_name(errno));
        return;
    }
    if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
        printf("dev %s %c %u:%u open=%s mode=%04o uid=%u gid=%u\n", path,
               S_ISCHR(st.st_mode) ? 'c' : 'b', major(st.st_rdev), minor(st.st_rdev),
               errno_name(open_errno(path)), (unsigned)(st.st_mode & 07777),
               (unsigned)st.st_uid, (unsigned)st.st_gid);
    } else if (S_ISLNK(st.st_mode)) {
        char target[PATH_MAX];
        ssize_t n = readlink(path, target, sizeof target - 1);
        target[n < 0 ? 0 : n] = '\0';
        printf("link %s -> %s\n", path, target);
    } else if (S_ISDIR(st.st_mode)) {
        printf("dir %s\n", path);
        struct dirent **names;
        int n = scandir(path, &names, NULL, alphasort);
        for (int i = 0; i < n; i++) {
            if (strcmp(names[i]->d_name, ".") && strcmp(names[i]->d_name, "..")) {
                char child[PATH_MAX];
                snprintf(child, sizeof child, "%s/%s", path, names[i]->d_name);
                report(child);
            }
            free(names[i]);
        }
        if (n >= 0)
            free(names);
    } else {
        printf("file %s open=%s\n", path, errno_name(open_errno(path)));
    }
}

static int cmd_devices(void)
{
    struct dirent **names;
    int n = scandir("/dev", &names, NULL, alphasort);
    for (int i = 0; i < n; i++) {
        const char *s = names[i]->d_name;
        if (!strncmp(s, "nvidia", 6) || !strcmp(s, "dri")) {
            char path[PATH_MAX];
            snprintf(path, sizeof path, "/dev/%s", s);
            report(path);
        }
        free(names[i]);
    }
    if (n >= 0)
        free(names);
    return 0;
}

static int cmd_dlopen(const char *lib)
{
    void *h = dlopen(lib, RTLD_NOW);
    if (!h) {
        printf("dlopen=fail error=%s\n", dlerror());
        return 2;
    }
    struct link_map *map = NULL;
    char real[PATH_MAX] = "";
    const char *name = "";
    if (dlinfo(h, RTLD_DI_LINKMAP, &map) == 0 && map) {
        name = map->l_name;
        if (!realpath(name, real))
            snprintf(real, sizeof real, "%s", name);
    }
    const char **version = dlsym(h, "nvlaunch_fake_driver_version");
    printf("dlopen=ok path=%s realpath=%s version=%s\n", name, real,
           version && *version ? *version : "none");

    int (*drv)(int *) = (int (*)(int *))dlsym(h, "cuDriverGetVersion");
    if (drv) {
        int v = 0, r = drv(&v);
        printf("cuda=%d\n", r ? -r : v);
    }
    int (*init)(unsigned) = (int (*)(unsigned))dlsym(h, "cuInit");
    if (init) {
        int r = init(0);
        printf("cuInit=%d\n", r);
        int (*count)(int *) = (int (*)(int *))dlsym(h, "cuDeviceGetCount");
        int (*get)(int *, int) = (int (*)(int *, int))dlsym(h, "cuDeviceGet");
        int (*getname)(char *, int, int) = (int (*)(char *, int, int))dlsym(h, "cuDeviceGetName");
        int n = 0;
        if (r == 0 && count && count(&n) == 0) {
            printf("count=%d\n", n);
            for (int i = 0; get && getname && i < n; i++) {
                int d;
                char devname[128] = "";
                if (get(&d, i) == 0 && getname(devname, sizeof devname, d) == 0)
                    printf("device%d=%s\n", i, devname);
            }
        }
    }
    fflush(stdout);
    return 0;
}

static int cmd_ids(void)
{
    gid_t groups[256];
    int n = getgroups(256, groups);
    printf("uid=%u\ngid=%u\neuid=%u\negid=%u\ngroups=", (unsigned)getuid(),
           (unsigned)getgid(), (unsigned)geteuid(), (unsigned)getegid());
    for (int i = 0; i < n; i++)
        printf(i ? ",%u" : "%u", (unsigned)groups[i]);
    printf("\n");

    FILE *f = fopen("/proc/self/status", "re");
    char line[512];
    static const char *keys[] = {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
                                 "NoNewPrivs", "Seccomp", NULL};
    while (f && fgets(line, sizeof line, f)) {
        for (int k = 0; keys[k]; k++) {
            size_t len = strlen(keys[k]);
            if (!strncmp(line, keys[k], len) && line[len] == ':') {
                char *v = line + len + 1;
                v += strspn(v, " \t");
                v[strcspn(v, "\n")] = '\0';
                printf("%s=%s\n", keys[k], v);
            }
        }
    }
    if (f)
        fclose(f);
    return 0;
}

static int cmd_open(const char *path)
{
    printf("path=%s open=%s\n", path, errno_name(open_errno(path)));
    return 0;
}

static int cmd_mounts(void)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f) {
        printf("mounts=fail error=%s\n", errno_name(errno));
        return 1;
    }
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        /* id parent maj:min root mountpoint opts [optional...] - fstype source superopts */
        char *field[64];
        int n = 0;
        for (char *tok = strtok(line, " \n"); tok && n < 64; tok = strtok(NULL, " \n"))
            field[n++] = tok;
        int dash = 6;
        while (dash < n && strcmp(field[dash], "-"))
            dash++;
        if (n < 6 || dash + 2 >= n)
            continue;
        printf("mount target=%s fstype=%s source=%s opts=%s\n", field[4], field[dash + 1],
               field[dash + 2], field[5]);
    }
    fclose(f);
    return 0;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "devices"))
        return cmd_devices();
    if (!strcmp(cmd, "dlopen") && argc > 2)
        return cmd_dlopen(argv[2]);
    if (!strcmp(cmd, "ids"))
        return cmd_ids();
    if (!strcmp(cmd, "open") && argc > 2)
        return cmd_open(argv[2]);
    if (!strcmp(cmd, "mounts"))
        return cmd_mounts();
    fprintf(stderr, "usage: probe devices | dlopen LIB | ids | open PATH | mounts\n");
    return 64;
}
