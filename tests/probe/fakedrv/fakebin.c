/*
 * fakebin.c - stands in for the driver binaries that tests only need to find,
 * inject and start (nvidia-debugdump, nvidia-persistenced,
 * nvidia-cuda-mps-control, nvidia-cuda-mps-server).  Dynamically linked
 * against glibc like the real ones; says which one it is and exits 0.
 */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    const char *name = argc > 0 ? argv[0] : "fakebin";
    const char *slash = strrchr(name, '/');
    printf("%s: fake NVIDIA driver binary\n", slash ? slash + 1 : name);
    return 0;
}
