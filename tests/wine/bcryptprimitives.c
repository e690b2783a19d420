/* A stand-in for Windows 10's bcryptprimitives.dll, for running tests under Wine only.
 * Rust's std draws its random numbers (HashMap keys) from ProcessPrng, which Wine 8
 * lacks; this gives it the same bytes through RtlGenRandom (SystemFunction036), which
 * Wine has. Built from this source by scripts/wine-prng, placed beside the .exe. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T size)
{
    while (size > 0) {
        ULONG chunk = size > 0x40000000 ? 0x40000000 : (ULONG)size;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        size -= chunk;
    }
    return TRUE;
}
