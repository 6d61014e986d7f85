// examples/common/svg_plot.hpp: the hand-written SVG frame the examples' learning-curve plots share
// (examples/critique_demo, examples/critique_lm): the page with its title, and each panel's box, grid,
// axis labels and title. The curves themselves are each example's own.
#pragma once

#include <cstdio>
#include <string>

namespace example_svg {

// The <svg> element (W x H, white) and the page title centred on top. The caller closes it with "</svg>".
inline void begin(FILE* f, double W, double H, const std::string& title) {
  std::fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
                  "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", W, H);
  std::fprintf(f, "<text x=\"%.0f\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">%s</text>\n", W / 2, title.c_str());
}

// A panel at (x0, top) of pw x ph: its title above, the box, five grid lines labelled 0 .. y_max on
// the left and 0 .. x_max below, and the x axis's label.
inline void panel_frame(FILE* f, double x0, double top, double pw, double ph, double y_max, double x_max,
                        const char* title, const char* x_label) {
  std::fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">%s</text>\n", x0 + pw / 2, top - 8, title);
  std::fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#444\"/>\n", x0, top,
               pw, ph);
  for (int i = 0; i <= 4; ++i) {
    const double y = top + ph - ph * i / 4.0, x = x0 + pw * i / 4.0;
    std::fprintf(f, "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", x0, y, x0 + pw, y);
    std::fprintf(f, "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n", x0 - 5, y + 4, y_max * i / 4.0);
    std::fprintf(f, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%.0f</text>\n", x, top + ph + 16, x_max * i / 4.0);
  }
  std::fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">%s</text>\n", x0 + pw / 2, top + ph + 32, x_label);
}

}  // namespace example_svg
