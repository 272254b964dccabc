/*
 * nvidia-smi.c - a fake nvidia-smi for tests without a GPU.
 *
 * Like the real tool it holds no GPU logic: it dlopen()s "libnvidia-ml.so.1"
 * (found through the container's ld.so cache / library path) and asks NVML.
 *
 *   nvidia-smi -L | --list-gpus   "GPU 0: NVIDIA H200 (UUID: GPU-...)" lines
 *   nvidia-smi --version          versions, in the real tool's layout
 *   nvidia-smi                    a short summary table
 *
 * Exit status as the real tool: 0; 6 "No devices were found"; the NVML error
 * code when init fails; 12 when libnvidia-ml.so.1 cannot be loaded.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

typedef int (*init_fn)(void);
typedef int (*count_fn)(unsigned int *);
typedef int (*handle_fn)(unsigned int, void **);
typedef int (*str_fn)(void *, char *, unsigned int);
typedef int (*sysver_fn)(char *, unsigned int);
typedef int (*cudaver_fn)(int *);
typedef const char *(*errstr_fn)(int);

static void *sym(void *lib, const char *name)
{
    void *p = dlsym(lib, name);
    if (!p) {
        fprintf(stderr, "nvidia-smi: libnvidia-ml.so.1 lacks %s\n", name);
        _exit(255);
    }
    return p;
}

int main(int argc, char **argv)
{
    int list = 0, version = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-L") || !strcmp(argv[i], "--list-gpus"))
            list = 1;
        else if (!strcmp(argv[i], "--version"))
            version = 1;
        else {
            printf("Invalid combination of input arguments. Please run "
                   "'nvidia-smi -h' for help.\n");
            return 2;
        }
    }

    void *lib = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (!lib) {
        printf("NVIDIA-SMI couldn't find libnvidia-ml.so library in your system. "
               "Please make sure that the NVIDIA Display Driver is properly installed "
               "and present in your system.\nPlease also try adding directory that "
               "contains libnvidia-ml.so to your system PATH.\n");
        return 12;
    }
    errstr_fn errstr = (errstr_fn)sym(lib, "nvmlErrorString");
    int r = ((init_fn)sym(lib, "nvmlInit_v2"))();
    if (r) {
        printf("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
               "driver (%s). Make sure that the latest NVIDIA driver is installed and "
               "running.\n\n", errstr(r));
        return r;
    }

    char drv[80] = "";
    int cuda = 0;
    ((sysver_fn)sym(lib, "nvmlSystemGetDriverVersion"))(drv, sizeof drv);
    ((cudaver_fn)sym(lib, "nvmlSystemGetCudaDriverVersion"))(&cuda);
    if (version) {
        printf("NVIDIA-SMI version  : %s\nNVML version        : %.*s\n"
               "DRIVER version      : %s\nCUDA Version        : %d.%d\n",
               drv, (int)(strrchr(drv, '.') ? strrchr(drv, '.') - drv : (long)strlen(drv)),
               drv, drv, cuda / 1000, cuda % 1000 / 10);
        return 0;
    }

    unsigned int n = 0;
    ((count_fn)sym(lib, "nvmlDeviceGetCount_v2"))(&n);
    if (n == 0) {
        printf("No devices were found\n");
        return 6;
    }
    handle_fn handle = (handle_fn)sym(lib, "nvmlDeviceGetHandleByIndex_v2");
    str_fn get_name = (str_fn)sym(lib, "nvmlDeviceGetName");
    str_fn get_uuid = (str_fn)sym(lib, "nvmlDeviceGetUUID");
    if (!list)
        printf("+------------------------------------------------------------------------------+\n"
               "| NVIDIA-SMI %-15s Driver Version: %-14s CUDA Version: %2d.%d |\n"
               "+------------------------------------------------------------------------------+\n",
               drv, drv, cuda / 1000, cuda % 1000 / 10);
    for (unsigned int i = 0; i < n; i++) {
        void *dev;
        char name[96] = "", uuid[96] = "";
        if (handle(i, &dev))
            continue;
        get_name(dev, name, sizeof name);
        get_uuid(dev, uuid, sizeof uuid);
        if (list)
            printf("GPU %u: %s (UUID: %s)\n", i, name, uuid);
        else
            printf("| %3u  %-24s %-46s |\n", i, name, uuid);
    }
    if (!list)
        printf("+------------------------------------------------------------------------------+\n");
    return 0;
}
